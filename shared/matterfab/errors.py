"""Typed errors shared by the library, the services and the CLI.

Every error names the field it is about and the rule that was broken, so an ERP integrator,
an operator or a test can act on it without reading a traceback. The `code` of each class is
part of the contract (it appears in order events and dead letters): never reuse or renumber.
"""

from __future__ import annotations

from dataclasses import dataclass


class MatterfabError(Exception):
    """Base of every error matterfab raises on purpose."""

    code = "error"


@dataclass(frozen=True)
class FieldError:
    """One broken rule on one field (`field` is a dotted path such as `devices[3].passcode`)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidInput(MatterfabError, ValueError):
    """Input that breaks one or more rules; carries every broken rule, not only the first."""

    code = "invalid_input"

    def __init__(self, errors: list[FieldError] | FieldError | str, message: str | None = None):
        if isinstance(errors, FieldError):
            errors = [errors]
        elif isinstance(errors, str):
            errors = [FieldError(errors, message or "is invalid")]
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    @property
    def field(self) -> str:
        """The field of the first broken rule."""
        return self.errors[0].field


def invalid(field: str, message: str) -> InvalidInput:
    """Build an InvalidInput for one field and one rule (use as `raise invalid(...)`)."""
    return InvalidInput([FieldError(field, message)])


class IntegrityError(MatterfabError):
    """A write-once object already exists with different bytes: never overwrite, raise an alarm."""

    code = "integrity"


class AttestationError(MatterfabError):
    """A certificate or key failed a check (chain, profile, signature)."""

    code = "attestation"


class StackError(MatterfabError):
    """The local broker or object store could not be started, reached or stopped."""

    code = "stack"


class DependencyError(StackError):
    """Kafka or the S3 store failed us; the message says what, where, and what to set or start.

    `transient` tells a long-running process whether waiting can help (the dependency is away)
    or not (it refused the credentials, or lacks the bucket or topic: a deployment to fix).
    """

    transient = False


class Unreachable(DependencyError):
    """Kafka or the S3 store did not answer (down, wrong address, timed out)."""

    transient = True


class Refused(DependencyError):
    """The dependency answered and refused us (credentials, TLS trust, authorization)."""


class Missing(DependencyError):
    """The dependency answered but lacks what we need (the bucket, a topic)."""


class JoinStalled(DependencyError):
    """Kafka answers, but a consumer group does not take this member in (it waits for a member
    that departed without leaving, or a rebalance that does not end): waiting can help."""

    transient = True
