"""Capped exponential backoff with jitter: how every matterfab process waits for a dependency.

The delay starts at 0.2 s and doubles up to 10 s; each delay is spread by ±20 % so that many
instances that lost the broker together do not all knock again in the same instant when it
returns. A process logs one line per attempt and one summary when the dependency is back
(`Outage`), so an outage of minutes costs a few dozen log lines, not thousands.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

INITIAL_S = 0.2
MAXIMUM_S = 10.0
JITTER = 0.2  # each delay is drawn from [d·(1-JITTER), d·(1+JITTER)], then capped
_SHARED = random.Random()  # noqa: S311 - retry jitter, not a secret


@dataclass
class Backoff:
    """Successive delays 0.2, 0.4, 0.8 … 10, 10 s, each with jitter."""

    initial: float = INITIAL_S
    maximum: float = MAXIMUM_S
    jitter: float = JITTER
    attempts: int = 0
    # The module's shared generator unless a test gives one: a Backoff is made for every record
    # a service handles and every send, and seeding a random.Random of its own from os.urandom
    # cost 9 us each time (issue #26), for jitter that needs no generator of its own.
    _rng: random.Random | None = field(default=None, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt (counts one attempt)."""
        base = min(self.initial * 2**self.attempts, self.maximum)
        self.attempts += 1
        spread = base * self.jitter
        rng = self._rng if self._rng is not None else _SHARED
        return min(self.maximum, max(0.0, base + rng.uniform(-spread, spread)))

    def reset(self) -> None:
        """Start again from the initial delay (the dependency answered)."""
        self.attempts = 0


@dataclass
class Outage:
    """Tracks one dependency being away: one log line per failed attempt, one when it is back."""

    what: str  # e.g. "Kafka at kafka:9092"
    log: logging.Logger
    backoff: Backoff = field(default_factory=Backoff)
    since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the dependency failed and has not answered since."""
        return self.since is not None

    def failed(self, reason: str) -> float:
        """Record a failed attempt, log it (one line), and return the delay before the next."""
        if self.since is None:
            self.since = time.monotonic()
        delay = self.backoff.next_delay()
        self.log.warning(
            "%s: attempt %d failed: %s; next attempt in %.1fs",
            self.what,
            self.backoff.attempts,
            reason,
            delay,
        )
        return delay

    def recovered(self) -> None:
        """The dependency answered: log the outage's summary (if there was one) and reset."""
        if self.since is not None:
            self.log.warning(
                "%s: back after %d failed attempts over %.1fs",
                self.what,
                self.backoff.attempts,
                time.monotonic() - self.since,
            )
        self.since = None
        self.backoff.reset()
