"""Kafka plumbing against the real broker: groups, committed offsets, lag, throughput."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import TopicPartition

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.topics import TopicSpec, apply_topics


async def fresh_topic(settings: KafkaSettings, partitions: int = 1) -> str:
    name = f"test.{uuid.uuid4().hex[:12]}"
    report = await apply_topics(settings, [TopicSpec(name, partitions, 3_600_000)])
    assert report.created == [name]
    return name


async def consume(consumer, count: int, within: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + within
    while len(records) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=count - len(records))
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_wait_for_broker(kafka_settings: KafkaSettings) -> None:
    await kafka.wait_for_broker(kafka_settings, timeout=10)


async def test_group_resumes_after_committed_offset(kafka_settings: KafkaSettings) -> None:
    topic = await fresh_topic(kafka_settings)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    producer = kafka.producer(kafka_settings)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"order-1")
    finally:
        await producer.stop()

    first = kafka.consumer(kafka_settings, topic, group_id=group)
    await first.start()
    try:
        records = await consume(first, 4)
        assert [r.value for r in records] == [b"m0", b"m1", b"m2", b"m3"]
        # Commit only what was processed: the first four records.
        tp = TopicPartition(topic, 0)
        await first.commit({tp: records[-1].offset + 1})
    finally:
        await first.stop()

    assert await kafka.committed_offsets(kafka_settings, group) == {tp: 4}
    lag = await kafka.group_lag(kafka_settings, group)
    assert lag == [kafka.PartitionLag(topic, 0, 4, 10, 6)]
    assert group in await kafka.list_groups(kafka_settings)

    second = kafka.consumer(kafka_settings, topic, group_id=group)
    await second.start()
    try:
        rest = await consume(second, 6)
        assert [r.value for r in rest] == [f"m{i}".encode() for i in range(4, 10)]
        assert rest[0].offset == 4
        await second.commit()
    finally:
        await second.stop()
    assert await kafka.group_lag(kafka_settings, group) == [kafka.PartitionLag(topic, 0, 10, 10, 0)]


async def test_lag_counts_partitions_never_committed(kafka_settings: KafkaSettings) -> None:
    topic = await fresh_topic(kafka_settings, partitions=3)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    producer = kafka.producer(kafka_settings)
    await producer.start()
    try:
        for partition, count in ((0, 2), (1, 5), (2, 1)):
            for _ in range(count):
                await producer.send_and_wait(topic, b"x", partition=partition)
    finally:
        await producer.stop()
    ends = await kafka.end_offsets(
        kafka_settings, await kafka.partitions_for(kafka_settings, [topic])
    )
    assert ends == {
        TopicPartition(topic, 0): 2,
        TopicPartition(topic, 1): 5,
        TopicPartition(topic, 2): 1,
    }

    reader = kafka.consumer(kafka_settings, topic, group_id=group)
    await reader.start()
    try:
        await consume(reader, 8)
        await reader.commit({TopicPartition(topic, 1): 3})
    finally:
        await reader.stop()
    lag = await kafka.group_lag(kafka_settings, group)
    assert lag == [
        kafka.PartitionLag(topic, 0, None, 2, 2),
        kafka.PartitionLag(topic, 1, 3, 5, 2),
        kafka.PartitionLag(topic, 2, None, 1, 1),
    ]


async def test_unknown_group_has_no_lag(kafka_settings: KafkaSettings) -> None:
    assert await kafka.group_lag(kafka_settings, f"never-{uuid.uuid4().hex}") == []


async def test_throughput(kafka_settings: KafkaSettings) -> None:
    """Produce and consume 20,000 x 300-byte records; report rates (a smoke bound only)."""
    topic = await fresh_topic(kafka_settings, partitions=6)
    count, payload = 20_000, b"x" * 300
    producer = kafka.producer(kafka_settings)
    await producer.start()
    began = time.perf_counter()
    try:
        futures = [
            await producer.send(topic, payload, key=f"dev-{i}".encode()) for i in range(count)
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    produce_s = time.perf_counter() - began

    reader = kafka.consumer(kafka_settings, topic, group_id=f"tp-{uuid.uuid4().hex[:8]}")
    await reader.start()
    began = time.perf_counter()
    try:
        records = await consume(reader, count, within=120)
    finally:
        await reader.stop()
    consume_s = time.perf_counter() - began
    assert len(records) == count
    print(
        f"\nkafka: produced {count / produce_s:,.0f} msg/s, consumed {count / consume_s:,.0f} msg/s"
        f" (300-byte records, 6 partitions)"
    )
    assert count / produce_s > 1000
