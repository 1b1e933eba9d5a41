"""The local stack's former module name: everything is in `matterfab.localstack` (issue #23).

Kept so the tests and benches that import `matterfab.stack` need no change; new code imports
`matterfab.localstack`. Services never import either.
"""

from matterfab.localstack import (
    BUCKET,
    HOST,
    INFRA,
    KAFKA,
    S3,
    LocalStack,
    PidRecord,
    S3Tls,
    StackPorts,
    broker_binary,
    free_ports,
    port_in_use,
    weed_binary,
)

__all__ = [
    "BUCKET",
    "HOST",
    "INFRA",
    "KAFKA",
    "S3",
    "LocalStack",
    "PidRecord",
    "S3Tls",
    "StackPorts",
    "broker_binary",
    "free_ports",
    "port_in_use",
    "weed_binary",
]
