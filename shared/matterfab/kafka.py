"""Kafka clients configured the one way matterfab uses them, plus the admin reads ops need.

Producers are idempotent with `acks=all`; consumers never auto-commit, so a service commits an
offset only after the work it stands for is durable (at-least-once, DESIGN §7). Nothing here
depends on transactions or log compaction, so the same code runs on the embedded broker and on
Apache Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from matterfab.config import KafkaSettings
from matterfab.errors import StackError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # one message batch ≤ 1 MiB: images travel through S3, not Kafka


def producer(settings: KafkaSettings, **kw: Any) -> AIOKafkaProducer:
    """An idempotent, acks=all producer (not started); keyword arguments override defaults."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "enable_idempotence": True,
        "acks": "all",
        # A few ms of batching multiplies throughput under load and costs nothing when idle.
        "linger_ms": 5,
        "compression_type": None,
        "max_request_size": MAX_REQUEST_BYTES,
    }
    options.update(kw)
    return AIOKafkaProducer(**options)


# Kafka long-polls an empty fetch for fetch_max_wait_ms; the embedded broker (noida-db) answers
# it at once, so every idle consumer would spin ~1,800 fetches/s and burn half a core (measured
# by the benchmark). We hold an empty fetch client-side instead. This wraps a private aiokafka
# method, which is why aiokafka is pinned; against a real Kafka it only adds a short pause
# after a fetch that already waited.
EMPTY_FETCH_PAUSE_S = 0.05


def _pace_empty_fetches() -> None:
    from aiokafka.consumer import fetcher

    original = fetcher.Fetcher._proc_fetch_request
    if getattr(original, "_matterfab_paced", False):
        return

    async def paced(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        started = time.monotonic()
        got_data = await original(self, assignment, node_id, request)
        if not got_data:
            pause = min(self._fetch_max_wait_ms / 1000, EMPTY_FETCH_PAUSE_S)
            remaining = pause - (time.monotonic() - started)
            if remaining > 0:
                try:
                    await asyncio.sleep(remaining)
                except asyncio.CancelledError:
                    # Closing, or partitions unassigned: aiokafka's own method returns here too.
                    return got_data
        return got_data

    paced._matterfab_paced = True  # type: ignore[attr-defined]
    fetcher.Fetcher._proc_fetch_request = paced


def consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, **kw: Any
) -> AIOKafkaConsumer:
    """A group consumer (not started) that commits only when told to, from the earliest offset."""
    _pace_empty_fetches()
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 200,
    }
    options.update(kw)
    return AIOKafkaConsumer(*topics, **options)


@asynccontextmanager
async def admin(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for the duration of the block."""
    client = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        request_timeout_ms=settings.request_timeout_ms,
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def wait_for_broker(settings: KafkaSettings, timeout: float = 30) -> None:
    """Return once the broker answers a metadata request; StackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        client = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            client_id=settings.client_id,
            request_timeout_ms=max(1000, int(min(5.0, timeout) * 1000)),
        )
        try:
            await client.start()
            await client.describe_cluster()
            return
        except (TimeoutError, KafkaError, OSError) as exc:
            last = exc
        finally:
            await client.close()
        await asyncio.sleep(0.2)
    raise StackError(f"Kafka at {settings.bootstrap} not reachable within {timeout:.0f}s: {last}")


async def partitions_for(settings: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics` (topics unknown to the broker are skipped)."""
    async with admin(settings) as client:
        # Never name a missing topic in a metadata request: brokers may auto-create it.
        known = set(await client.list_topics())
        wanted = [t for t in topics if t in known]
        described = await client.describe_topics(wanted) if wanted else []
    result: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"]:
            continue
        result.extend(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
    return sorted(result)


async def end_offsets(
    settings: KafkaSettings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The log-end offset (next offset to be written) of each partition."""
    wanted = list(partitions)
    if not wanted:
        return {}
    reader = consumer(settings, group_id=None)
    await reader.start()
    try:
        offsets: dict[TopicPartition, int] = await reader.end_offsets(wanted)
        return offsets
    finally:
        await reader.stop()


async def committed_offsets(settings: KafkaSettings, group_id: str) -> dict[TopicPartition, int]:
    """The offsets `group_id` has committed, per partition (partitions never committed omitted)."""
    async with admin(settings) as client:
        raw = await client.list_consumer_group_offsets(group_id)
    return {tp: meta.offset for tp, meta in raw.items() if meta.offset >= 0}


@dataclass(frozen=True)
class PartitionLag:
    """How far one consumer group is behind on one partition."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    end: int
    lag: int


async def group_lag(settings: KafkaSettings, group_id: str) -> list[PartitionLag]:
    """Per-partition lag of `group_id` over every topic it has committed offsets on."""
    committed = await committed_offsets(settings, group_id)
    if not committed:
        return []
    # Lag covers every partition of the group's topics, including ones it never committed on.
    partitions = await partitions_for(settings, {tp.topic for tp in committed})
    ends = await end_offsets(settings, partitions)
    rows = []
    for tp in partitions:
        done = committed.get(tp)
        end = ends.get(tp, 0)
        rows.append(PartitionLag(tp.topic, tp.partition, done, end, max(0, end - (done or 0))))
    return rows


async def list_groups(settings: KafkaSettings) -> list[str]:
    """Every consumer group the cluster knows, sorted by name."""
    async with admin(settings) as client:
        groups = await client.list_consumer_groups()
    return sorted({str(group[0]) for group in groups})
