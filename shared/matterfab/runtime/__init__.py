"""The loop every stream service runs: consume a batch, handle it, emit, then commit.

Delivery is at least once: offsets are committed only after every message of a batch was
handled and everything it emitted was acknowledged by the broker, so a crash at any point
means redelivery, never loss. (A service whose records are long and uneven, the builder's
lots, runs a sliding window instead of batches, a `WindowSpec`: a record is taken as a
slot frees, and each partition is committed up to its first record not yet done.) Handlers
are therefore idempotent (write-once objects, deterministic results). What a failure means
is decided in one table, `matterfab.failures.FailurePolicy` (first matching rule wins):

- `InvalidInput` or an unknown message: dead-letter it with the reason and go on;
- `IntegrityError` (a write-once object exists with other bytes): dead-letter and alarm;
- a permanent fault (credentials refused, bucket or topic missing, permission denied): no
  retry; the service stops taking records (nothing committed), `/healthz` answers 503 naming
  the fault, one log line says it, and the process stays up until stopped (a restart after the
  fix takes the records again);
- a transient failure (broker, S3 or network down): retry with backoff, without committing;
  a service waits for Kafka and S3 before it starts (and watches them while it runs: one log
  line per failed attempt, one when they are back, `/healthz` 503 meanwhile), and stops at
  start-up only on what no wait fixes (credentials refused, bucket or topic missing);
- a consumer that does not join its group while Kafka answers (a member departed without
  leaving holds the group): `JoinStalled`, one line naming the group and the members it waits
  for, never "Kafka unreachable"; the join is tried again at once;
- any other exception: retry a few times, then dead-letter, so one poison message cannot stall
  a partition forever.

Emitting has one path, `Publisher.send` (acknowledged before it returns): the runtime sends what
a handler returns right after the handler, and a handler that must publish before it ends is
handed that same publisher at construction (`Context.publisher`; see `Publisher`).
A long-running service never exits because Kafka or S3 is slow or away: it waits, with backoff,
and still stops promptly on SIGTERM.

The package: `core` (StreamService: clients, dependencies, permanent faults), `specs`
(`BatchSpec | WindowSpec`), `batch` and `window` (one loop per mode), `handling` (one record
under the failure policy), `publisher` (Emit, Publisher) and `serve` (a service as a process).
"""

from matterfab.failures import (
    HTTP_TRANSIENT,
    MAX_UNEXPECTED_ATTEMPTS,
    POLICY,
    TRANSIENT,
    Action,
    FailurePolicy,
    PermanentFault,
    Rule,
)
from matterfab.runtime.core import (
    StreamService,
    is_transient,
    join_stalled_message,
    run_until_signalled,
)
from matterfab.runtime.handling import LOT_MESSAGES, Handling
from matterfab.runtime.publisher import PRODUCER_STATE_LOST, Emit, Publisher, Send
from matterfab.runtime.serve import Context, Needs, ServiceSettings, serve, service_settings
from matterfab.runtime.specs import BatchSpec, Route, ServiceSpec, WindowSpec
from matterfab.runtime.window import COMMIT_INTERVAL_S, HAND_OVER_TIMEOUT_S, POLL_MS

__all__ = [
    "COMMIT_INTERVAL_S",
    "HAND_OVER_TIMEOUT_S",
    "HTTP_TRANSIENT",
    "LOT_MESSAGES",
    "MAX_UNEXPECTED_ATTEMPTS",
    "POLICY",
    "POLL_MS",
    "PRODUCER_STATE_LOST",
    "TRANSIENT",
    "Action",
    "BatchSpec",
    "Context",
    "Emit",
    "FailurePolicy",
    "Handling",
    "Needs",
    "PermanentFault",
    "Publisher",
    "Route",
    "Rule",
    "Send",
    "ServiceSettings",
    "ServiceSpec",
    "StreamService",
    "WindowSpec",
    "is_transient",
    "join_stalled_message",
    "run_until_signalled",
    "serve",
    "service_settings",
]
