"""After a hard death the embedded broker hands a live producer's id to a new producer.

noida-db 0.2.3 keeps `next_producer_id` in its periodic snapshot only. SIGKILLed, it comes back
with the counter of its last snapshot and gives the next InitProducerId an id that a producer
made after that snapshot still holds. Both then write under one producer id with their own
sequence numbers, and the broker takes a record whose sequence the other already used for a
duplicate: it acknowledges it (with the other's offset) and drops it.

Our services' producers were idempotent and renewed after the broker forgot them ("producer
state lost ... new producer"), which is exactly this sequence. Seen in
test_broker_kill (REL-KILL-ASSEMBLE, 1 run of 3): the signer's LotAttested and LedgerLot records
of five lots were acknowledged and never written; their images had been built before the kill,
so nothing re-announced them, and the order completed with 80 DACs missing from the ledger.

This runs the broker with the services' own producer settings: since producers are no longer
idempotent (`matterfab.kafka.producer`), no producer id is shared and every acknowledged record
is in the log. It failed every time with idempotent producers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.stack import LocalStack
from tests.reliability.harness import read_topic, sigkill_broker

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(180)]

TOPIC = "rel.producer-ids"


async def next_snapshot(stack: LocalStack, timeout: float = 60) -> None:
    """Wait until the broker has written its periodic snapshot once more."""
    path = stack.home / "data" / "kafka" / "kafka.json"
    before = path.stat().st_mtime if path.exists() else 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime != before:
            await asyncio.sleep(0.5)  # the file is whole once its writer is done with it
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no broker snapshot within {timeout:.0f}s")


@pytest_asyncio.fixture(loop_scope="session")
async def topic(stack: LocalStack, kafka_settings: KafkaSettings) -> AsyncIterator[str]:
    """A one-partition topic of our own, in the broker's snapshot; the broker healthy after."""
    async with kafka.admin(kafka_settings) as client:
        if TOPIC not in await client.list_topics():
            await client.create_topics([NewTopic(TOPIC, 1, 1)])
    try:
        yield TOPIC
    finally:
        if not stack.is_running():
            await asyncio.to_thread(stack.start)


def producer_id(producer: AIOKafkaProducer) -> int | None:
    """The id InitProducerId gave this producer (None: not idempotent), for the message only."""
    # PRIVATE (aiokafka 0.14.0, pinned as for matterfab.kafka's fetch pacing).
    return getattr(getattr(producer, "_txn_manager", None), "producer_id", None)


async def test_every_record_acknowledged_after_a_broker_death_is_in_the_log(
    stack: LocalStack, kafka_settings: KafkaSettings, topic: str
) -> None:
    tp = TopicPartition(topic, 0)
    early = kafka.producer(kafka_settings)
    await early.start()
    await early.send_and_wait(topic, b"early")
    await next_snapshot(stack)
    late = kafka.producer(kafka_settings)  # made after the snapshot: the snapshot lacks its id
    await late.start()
    fresh = kafka.producer(kafka_settings)
    # What the broker acknowledged after it came back: value -> offset. (Records acknowledged
    # before its death and after its last snapshot are lost: a documented limit, not this.)
    acked: dict[bytes, int] = {}
    try:
        for n in range(3):
            await late.send_and_wait(topic, b"late-%d" % n)
        await asyncio.to_thread(sigkill_broker, stack)
        await asyncio.to_thread(stack.start)
        start = (await kafka.end_offsets(kafka_settings, [tp]))[tp]
        await fresh.start()  # what a service does once the broker forgot its producer
        ids = {"late": producer_id(late), "fresh": producer_id(fresh)}
        for n in range(3):
            acked[b"fresh-%d" % n] = (await fresh.send_and_wait(topic, b"fresh-%d" % n)).offset
        # The old producer writes on, as a service's does until the broker refuses it.
        with contextlib.suppress(KafkaError):
            acked[b"late-3"] = (await late.send_and_wait(topic, b"late-3")).offset
        for n in range(3, 6):
            acked[b"fresh-%d" % n] = (await fresh.send_and_wait(topic, b"fresh-%d" % n)).offset
    finally:
        for p in (early, late, fresh):
            with contextlib.suppress(KafkaError):
                await p.stop()
    log = {r.value for r in await read_topic(kafka_settings, topic, {0: start})}
    lost = {v.decode(): o for v, o in acked.items() if v not in log}
    assert not lost, f"acknowledged at these offsets, never written: {lost} (producer ids {ids})"
