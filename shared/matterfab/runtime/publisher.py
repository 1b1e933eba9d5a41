"""The one way a stream service sends: `Publisher.send`, acknowledged before it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from pydantic import BaseModel

from matterfab import kafka, metrics
from matterfab.backoff import Backoff
from matterfab.config import KafkaSettings
from matterfab.failures import POLICY, Action, PermanentFault
from matterfab.messages import DEAD_LETTER, DeadLetter, ErrorItem, encode
from matterfab.messages.dead_letter import MAX_PAYLOAD_CHARS

log = logging.getLogger("matterfab.runtime")

# Answers meaning the broker no longer knows our idempotent producer: only a new one helps.
PRODUCER_STATE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)


@dataclass(frozen=True)
class Emit:
    """A message to send: topic, key and the message."""

    topic: str
    key: str
    message: BaseModel


# `Publisher.send`, as handed to a handler that must publish before it ends.
Send = Callable[[Sequence[Emit]], Awaitable[None]]


class Publisher:
    """The producer a stream service publishes with: the one way anything is sent.

    The runtime sends the emits a handler returns through it after the handler, and commits the
    handled offsets only after the broker acknowledged them. A handler that must publish before
    it ends (the allocator: a million-device order cannot hold all its emits in memory) is given
    this same object at construction (`Context.publisher`, usually its `send`) and awaits
    `send` for each batch: every message is acknowledged before the handler returns, so the
    commit still comes after it. There is no other way to emit.
    """

    def __init__(self, name: str, settings: KafkaSettings):
        self.name = name
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the producer (within the connect timeout; Unreachable otherwise)."""
        producer = kafka.producer(self.settings)
        await kafka.start(producer, self.settings, "producer")
        self.producer = producer

    async def stop(self) -> None:
        """Flush what is queued, then stop the producer."""
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await producer.flush()
            finally:
                await producer.stop()

    async def send(self, emits: Sequence[Emit]) -> None:
        """Send messages and wait until the broker has acknowledged every one."""
        if not emits:
            return
        if self.producer is None:
            raise RuntimeError(f"{self.name}: publisher used before the service started")
        backoff = Backoff()
        while True:
            producer = self.producer
            try:
                futures = [await self._send_one(e) for e in emits]
                await asyncio.gather(*futures)
                return
            except PRODUCER_STATE_LOST as exc:
                # The broker forgot this producer's sequence numbers (it restarted): every
                # later send would fail the same way. A new producer gets a new identity.
                log.warning("%s: producer state lost (%s); new producer", self.name, exc)
                await self._renew(producer)
            except KafkaError as exc:
                if POLICY.action(exc) is Action.STOP:  # refused: ACLs, credentials
                    raise PermanentFault("sending", exc) from exc
                # Resending is safe: consumers of our topics are idempotent.
                delay = backoff.next_delay()
                log.warning(
                    "%s: send failed (attempt %d: %s); next attempt in %.1fs",
                    self.name,
                    backoff.attempts,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _renew(self, failed: AIOKafkaProducer | None) -> None:
        """Replace the producer, once, however many senders saw it fail."""
        async with self._lock:
            if self.producer is not failed:
                return  # another sender already replaced it
            fresh = kafka.producer(self.settings)
            await kafka.start(fresh, self.settings, "producer")
            self.producer = fresh
        if failed is not None:
            with contextlib.suppress(Exception):
                await failed.stop()

    async def _send_one(self, emit: Emit) -> Any:
        """Queue one message; one too big for the broker becomes a dead letter instead.

        A too-big message fails the same way on every retry: retrying it (as for other Kafka
        errors) would stall the service on this batch forever.
        """
        assert self.producer is not None
        value = encode(emit.message)
        try:
            return await self.producer.send(emit.topic, value, key=emit.key.encode())
        except MessageSizeTooLargeError:
            log.error(
                "%s: a %d-byte message for %s is too large to send; dead-lettered",
                self.name,
                len(value),
                emit.topic,
            )
            metrics.FAILURES.labels(self.name, "too_large").inc()
            letter = DeadLetter(
                service=self.name,
                topic=emit.topic,
                partition=-1,
                offset=-1,
                key=emit.key,
                reason="too_large",
                errors=[
                    ErrorItem(
                        field="$",
                        message=f"emitted message is {len(value)} bytes, over the broker limit",
                    )
                ],
                payload=value[:MAX_PAYLOAD_CHARS].decode("utf-8", "replace"),
            )
            return await self.producer.send(DEAD_LETTER, encode(letter), key=emit.key.encode())
