"""The runtime's sliding window against the real local broker: records keep flowing past a
slow one while its partition's commit waits for it, everything ends committed, and a second
member joining (a rebalance: the hand-over commit inside aiokafka's revoke callback) loses
nothing. The bookkeeping itself: tests/unit/test_watermarks.py, test_runtime_window.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import WorkOrder
from matterfab.runtime import Emit, ServiceSpec, StreamService, WindowSpec
from matterfab.topics import TopicSpec, apply_topics


async def fresh_topic(settings: KafkaSettings, partitions: int) -> str:
    name = f"test.window.{uuid.uuid4().hex[:12]}"
    report = await apply_topics(settings, [TopicSpec(name, partitions, 3_600_000)])
    assert report.created == [name]
    return name


async def produce(settings: KafkaSettings, topic: str, partitions: int, each: int) -> None:
    """`each` records per partition, valued "<partition>/<offset>" (a fresh topic's offsets)."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for offset in range(each):
            for p in range(partitions):
                await producer.send_and_wait(topic, f"{p}/{offset}".encode(), partition=p)
    finally:
        await producer.stop()


def service(
    settings: KafkaSettings,
    topic: str,
    group: str,
    window: int,
    handle: Callable[[bytes], Awaitable[list[Emit]]],
    instance_id: str | None = None,
) -> StreamService[bytes]:
    spec: ServiceSpec[bytes] = WindowSpec(
        "windowed",
        topic,
        WorkOrder,  # not decoded: `decode` hands the handler the raw bytes
        group,
        handle=handle,
        decode=lambda raw: raw,
        window=window,
    )
    return StreamService(spec, settings, instance_id)


async def until(check: Callable[[], Awaitable[bool]], within: float, *tasks: Any) -> None:
    deadline = time.monotonic() + within
    while not await check():
        for task in tasks:
            if task.done():
                task.result()
                raise AssertionError("a service ended")
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_slow_record_holds_its_partition_not_the_window(
    kafka_settings: KafkaSettings,
) -> None:
    topic = await fresh_topic(kafka_settings, partitions=2)
    group = f"test-window-{uuid.uuid4().hex[:8]}"
    await produce(kafka_settings, topic, partitions=2, each=15)
    slow, release = b"0/4", asyncio.Event()
    done: list[bytes] = []

    async def handle(raw: bytes) -> list[Emit]:
        if raw == slow:
            await release.wait()
        else:
            await asyncio.sleep(0.01)
        done.append(raw)
        return []

    svc = service(kafka_settings, topic, group, window=2, handle=handle)
    task = asyncio.create_task(svc.run())
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    try:

        async def everything_but_the_slow_one() -> bool:
            committed = await kafka.committed_offsets(kafka_settings, group)
            return len(done) == 29 and committed.get(p1) == 15

        # Batches of two would stop at the slow record; the window runs on past it.
        await until(everything_but_the_slow_one, 60, task)
        assert (await kafka.committed_offsets(kafka_settings, group)).get(p0, 0) <= 4
        release.set()

        async def all_committed() -> bool:
            committed = await kafka.committed_offsets(kafka_settings, group)
            return committed == {p0: 15, p1: 15}

        await until(all_committed, 30, task)
    finally:
        svc.stop()
        await asyncio.wait_for(task, 30)
    assert sorted(done) == sorted(f"{p}/{o}".encode() for p in (0, 1) for o in range(15))


async def test_a_member_joining_mid_stream_loses_nothing(kafka_settings: KafkaSettings) -> None:
    topic = await fresh_topic(kafka_settings, partitions=4)
    group = f"test-window-{uuid.uuid4().hex[:8]}"
    await produce(kafka_settings, topic, partitions=4, each=40)
    handled: Counter[bytes] = Counter()
    by: dict[str, int] = {"a": 0, "b": 0}

    def handler(member: str) -> Callable[[bytes], Awaitable[list[Emit]]]:
        async def handle(raw: bytes) -> list[Emit]:
            await asyncio.sleep(0.02)
            handled[raw] += 1
            by[member] += 1
            return []

        return handle

    # Static members, as the services run (a dynamic one joining a busy group on the embedded
    # broker does not get in within the consumer's start timeout, batch loop or window).
    a = service(kafka_settings, topic, group, 3, handler("a"), instance_id=f"{group}-a")
    b = service(kafka_settings, topic, group, 3, handler("b"), instance_id=f"{group}-b")
    first = asyncio.create_task(a.run())
    second: asyncio.Task[None] | None = None
    ends = {TopicPartition(topic, p): 40 for p in range(4)}
    try:

        async def some_handled() -> bool:
            return len(handled) >= 20

        await until(some_handled, 60, first)
        second = asyncio.create_task(b.run())  # the group rebalances with records in flight

        async def all_committed() -> bool:
            return await kafka.committed_offsets(kafka_settings, group) == ends

        await until(all_committed, 120, first, second)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(first, 30)
        if second is not None:
            await asyncio.wait_for(second, 30)
    assert set(handled) == {f"{p}/{o}".encode() for p in range(4) for o in range(40)}
    assert by["b"] > 0, "the second member got no partition"
    # Redelivery after the rebalance is bounded by the window and what was not yet committed.
    assert sum(handled.values()) - len(handled) <= 2 * 3 + 40, handled.most_common(5)
