"""How a stream service handles one record: decode it, run its handler as the failure policy
says (retry, dead-letter, or stop: `matterfab.failures`), and make its dead letter."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRecord

from matterfab import metrics
from matterfab.backoff import Backoff
from matterfab.errors import InvalidInput
from matterfab.failures import POLICY, Action, FailurePolicy, PermanentFault, Rule
from matterfab.messages import DEAD_LETTER, DeadLetter, ErrorItem
from matterfab.messages.codec import decode
from matterfab.messages.dead_letter import MAX_PAYLOAD_CHARS
from matterfab.messages.lots import LotAllocated, LotAttested
from matterfab.runtime.publisher import Emit
from matterfab.runtime.specs import ServiceSpec

log = logging.getLogger("matterfab.runtime")
LOT_MESSAGES = (LotAllocated, LotAttested)  # a message of many devices (metrics.DEVICES)


class Handling:
    """One spec's records, one at a time: what the batch and window loops call."""

    def __init__(
        self,
        spec: ServiceSpec[Any],
        policy: FailurePolicy = POLICY,
        available: Callable[[], Awaitable[None]] | None = None,
    ):
        self.spec = spec
        self.policy = policy
        # Returns once the service's dependencies answer (StreamService.available): what a
        # WAIT failure waits for before its record is handled again.
        self.available = available
        # Records in flight that wait wait one at a time: one probes (one log line per
        # attempt), the others then find the dependencies back at their first probe.
        self._waiting = asyncio.Lock()

    async def retrying(self, fn: Callable[[], Awaitable[Sequence[Emit]]], what: str) -> list[Emit]:
        """Run `fn` as the policy says: retry what is transient (without end) and what is
        unexpected (a few times), raise a dead-letter failure at once, and turn a permanent one
        into `PermanentFault`. A dependency away past its own client's retries (WAIT) is not
        retried on top: `fn` runs again only once the dependencies answer."""
        backoff = Backoff()
        while True:
            try:
                return list(await fn())
            except Exception as exc:
                action = self.policy.action(exc)
                if action is Action.STOP:
                    if isinstance(exc, PermanentFault):
                        raise
                    raise PermanentFault(what, exc) from exc
                if action is Action.DEAD_LETTER or (
                    action is Action.RETRY_THEN_DEAD_LETTER
                    and backoff.attempts + 1 >= self.policy.max_unexpected_attempts
                ):
                    raise
                delay = backoff.next_delay()
                waits = action is Action.WAIT and self.available is not None
                log.warning(
                    "%s: %s failed (attempt %d: %s: %s); %s in %.1fs",
                    self.spec.name,
                    what,
                    backoff.attempts,
                    type(exc).__name__,
                    exc,
                    "waiting for the dependencies, then again," if waits else "next attempt",
                    delay,
                )
                await asyncio.sleep(delay)
                if waits:
                    assert self.available is not None
                    async with self._waiting:
                        await self.available()

    async def process(self, record: ConsumerRecord) -> list[Emit]:
        spec = self.spec
        metrics.IN_FLIGHT.labels(spec.name).inc()
        started = time.perf_counter()
        try:
            raw = record.value or b""
            route = spec.routes.get(record.topic)
            if route is not None:
                msg: Any = decode(raw, route.model)
                handle: Callable[[Any], Awaitable[Sequence[Emit]]] = route.handle
            else:
                msg = spec.decode(raw) if spec.decode else decode(raw, spec.model)
                handle = spec.handle
            emits = await self.retrying(lambda: handle(msg), "handling")
            metrics.MESSAGES.labels(spec.name, record.topic, "ok").inc()
            devices = getattr(msg, "devices", None) if isinstance(msg, LOT_MESSAGES) else None
            metrics.DEVICES.labels(spec.name, record.topic).inc(len(devices) if devices else 1)
            return emits
        except Exception as exc:
            rule = self.policy.rule_for(exc)
            if rule.action is Action.STOP:
                if isinstance(exc, PermanentFault):
                    raise
                raise PermanentFault("handling", exc) from exc
            return [self._set_aside(record, rule, exc)]
        finally:
            metrics.IN_FLIGHT.labels(spec.name).dec()
            metrics.PROCESSING.labels(spec.name).observe(time.perf_counter() - started)

    def _set_aside(self, record: ConsumerRecord, rule: Rule, exc: Exception) -> Emit:
        """The dead letter for a record given up on, logged as its rule says."""
        name, where = self.spec.name, _where(record)
        if rule.action is Action.DEAD_LETTER and isinstance(exc, InvalidInput):
            log.warning("%s: invalid message set aside: %s", name, exc, extra=where)
            return self._dead_letter(record, rule.reason, exc.errors)
        if rule.action is Action.DEAD_LETTER:
            alarm = "INTEGRITY ALARM" if rule.reason == "integrity" else rule.reason
            log.error("%s: %s: %s", name, alarm, exc, extra=where)
            return self._dead_letter(record, rule.reason, [ErrorItem(field="$", message=str(exc))])
        log.exception("%s: giving up on a message", name, extra=where)
        item = ErrorItem(field="$", message=f"{type(exc).__name__}: {exc}"[:500])
        return self._dead_letter(record, "internal", [item])

    def _dead_letter(self, record: ConsumerRecord, reason: str, errors: Sequence[Any]) -> Emit:
        metrics.MESSAGES.labels(self.spec.name, record.topic, "dead_letter").inc()
        metrics.FAILURES.labels(self.spec.name, reason).inc()
        items = [e if isinstance(e, ErrorItem) else ErrorItem.of(e) for e in errors]
        key = record.key.decode("utf-8", "replace") if record.key else None
        letter = DeadLetter(
            service=self.spec.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            reason=reason,
            errors=items,
            payload=(record.value or b"").decode("utf-8", "replace")[:MAX_PAYLOAD_CHARS],
        )
        return Emit(
            DEAD_LETTER, key or f"{record.topic}/{record.partition}/{record.offset}", letter
        )


def _where(record: ConsumerRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}
