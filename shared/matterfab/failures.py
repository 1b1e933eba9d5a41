"""What a failure means to a stream service: one table from exception type to action.

Like FastStream's ack policies and exception middleware, every failure a handler (or a flush,
an idle hook, a send) raises is looked up here, first matching rule wins:

- RETRY: transient (Kafka or S3 away, a timeout, a 5xx): back off and try again, without
  committing; the work waits for the dependency.
- WAIT: a dependency away past its own client's retries (`Unreachable`: the object store
  retried the call until its deadline, or Kafka did not answer in time). The runtime does not
  retry the call again on top: it waits until its dependencies answer (`/healthz` 503
  meanwhile, one probe request per attempt), then handles the record once more.
- DEAD_LETTER: this message is bad (invalid input, an undecodable record) or collides with
  what is stored (an integrity alarm): set it aside on `mfg.dead-letter` with the reason, go on.
- STOP: permanent, a deployment to fix (credentials refused, bucket or topic missing,
  permission denied / EACCES): no retry helps, so none is made. The service stops taking
  records (nothing is committed: a restart after the fix takes them again), answers `/healthz`
  with 503 naming the fault, and logs it once; the process stays up to say so.
- RETRY_THEN_DEAD_LETTER: anything else (a bug, an unexpected answer): a few attempts, then a
  dead letter, so one poison message cannot stall a partition forever.

Commands (the CLI) do not retry in this sense: they fail at once with the one-line error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from matterfab import s3
from matterfab.errors import DependencyError, IntegrityError, InvalidInput, StackError, Unreachable

# Attempts of an unexpected failure (RETRY_THEN_DEAD_LETTER) before it is given up on.
MAX_UNEXPECTED_ATTEMPTS = 3


class Action(enum.Enum):
    """What the runtime does about a failure."""

    RETRY = "retry"
    WAIT = "wait"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"
    RETRY_THEN_DEAD_LETTER = "retry_then_dead_letter"


class PermanentFault(Exception):
    """A failure no retry fixes, met while `what` (handling, flush, sending): the service stops
    taking records and reports it. `cause` is the original exception."""

    def __init__(self, what: str, cause: BaseException):
        self.what = what
        self.cause = cause
        text = str(cause).strip() or type(cause).__name__
        super().__init__(f"{what} stopped: {text}"[:500])


@dataclass(frozen=True)
class Rule:
    """Exceptions of these types (and passing `test`, if given) get `action`; `reason` is the
    dead letter's reason (and the metrics label)."""

    catches: tuple[type[BaseException], ...]
    action: Action
    reason: str
    test: Callable[[BaseException], bool] | None = None

    def matches(self, exc: BaseException) -> bool:
        """Whether this rule is the one for `exc`."""
        return isinstance(exc, self.catches) and (self.test is None or self.test(exc))


def _permanent_dependency(exc: BaseException) -> bool:
    return isinstance(exc, DependencyError) and not exc.transient


# Kafka refusing us: no retry changes credentials or ACLs.
KAFKA_REFUSALS = (
    AuthenticationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)
# aiohttp failures that aiobotocore lets through unwrapped (a connection lost mid-body).
HTTP_TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
TRANSIENT = (ConnectionError, TimeoutError, OSError, KafkaError, *HTTP_TRANSIENT)

RULES: tuple[Rule, ...] = (
    Rule((PermanentFault,), Action.STOP, "permanent"),
    Rule((InvalidInput,), Action.DEAD_LETTER, "invalid_input"),
    Rule((IntegrityError,), Action.DEAD_LETTER, "integrity"),
    # Refused (credentials, TLS trust), Missing (bucket, topic): DependencyError.transient False.
    Rule((DependencyError,), Action.STOP, "permanent", _permanent_dependency),
    Rule((PermissionError,), Action.STOP, "permanent"),  # EACCES, EPERM: before OSError
    Rule(KAFKA_REFUSALS, Action.STOP, "permanent"),
    Rule((PermissionDeniedError, UnauthenticatedError), Action.STOP, "permanent"),  # obstore's
    # A dependency away past its client's own retries (the store's deadline): wait for it.
    Rule((Unreachable,), Action.WAIT, "transient"),
    # JoinStalled, and what else the stack raises that waiting may fix.
    Rule((StackError,), Action.RETRY, "transient"),
    Rule(TRANSIENT, Action.RETRY, "transient"),
    Rule((Exception,), Action.RETRY, "transient", s3.is_transient),  # botocore's and obstore's
)


@dataclass(frozen=True)
class FailurePolicy:
    """The table: the first rule matching an exception decides; `default` when none does."""

    rules: tuple[Rule, ...] = RULES
    default: Rule = Rule((BaseException,), Action.RETRY_THEN_DEAD_LETTER, "internal")
    max_unexpected_attempts: int = MAX_UNEXPECTED_ATTEMPTS

    def rule_for(self, exc: BaseException) -> Rule:
        """The rule that decides what `exc` means."""
        return next((r for r in self.rules if r.matches(exc)), self.default)

    def action(self, exc: BaseException) -> Action:
        """What to do about `exc`."""
        return self.rule_for(exc).action

    def transient(self, exc: BaseException) -> bool:
        """Whether waiting and trying again can help."""
        return self.action(exc) in (Action.RETRY, Action.WAIT)


POLICY = FailurePolicy()
