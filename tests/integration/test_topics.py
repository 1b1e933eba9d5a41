"""Applying deploy/topics.yaml to the real broker: idempotent, grows, never shrinks."""

from __future__ import annotations

import uuid

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.topics import ALL_TOPICS, TopicSpec, apply_topics, load_topics


async def partition_counts(settings: KafkaSettings, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tp in await kafka.partitions_for(settings, names):
        counts[tp.topic] = counts.get(tp.topic, 0) + 1
    return counts


async def test_apply_topics_file_twice(kafka_settings: KafkaSettings) -> None:
    specs = load_topics()
    # The stack applied the file at start; applying again (twice) changes nothing.
    for _ in range(2):
        report = await apply_topics(kafka_settings, specs)
        assert report.created == []
        assert sorted(report.existing) == sorted(ALL_TOPICS)
        assert report.grown == {} and report.mismatched == {}
    counts = await partition_counts(kafka_settings, list(ALL_TOPICS))
    assert counts == {s.name: s.partitions for s in specs}


async def test_created_topics_carry_their_retention(kafka_settings: KafkaSettings) -> None:
    async with kafka.admin(kafka_settings) as client:
        responses = await client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "mfg.dac-ledger")]
        )
    entries = {row[0]: row[1] for row in responses[0].resources[0][4]}
    assert entries["retention.ms"] == "-1"


async def test_apply_creates_then_reports_existing(kafka_settings: KafkaSettings) -> None:
    name = f"test.apply.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name, 2, 60_000)
    first = await apply_topics(kafka_settings, [spec])
    second = await apply_topics(kafka_settings, [spec])
    assert first.created == [name] and first.existing == []
    assert second.created == [] and second.existing == [name]
    assert await partition_counts(kafka_settings, [name]) == {name: 2}


async def test_apply_grows_but_never_shrinks(kafka_settings: KafkaSettings) -> None:
    name = f"test.grow.{uuid.uuid4().hex[:8]}"
    await apply_topics(kafka_settings, [TopicSpec(name, 2, 60_000)])
    grown = await apply_topics(kafka_settings, [TopicSpec(name, 4, 60_000)])
    assert grown.grown == {name: (2, 4)}
    assert await partition_counts(kafka_settings, [name]) == {name: 4}
    fewer = await apply_topics(kafka_settings, [TopicSpec(name, 1, 60_000)])
    assert fewer.mismatched == {name: (4, 1)} and fewer.grown == {}
    assert await partition_counts(kafka_settings, [name]) == {name: 4}
