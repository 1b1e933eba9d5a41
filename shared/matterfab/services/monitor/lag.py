"""Consumer-group lag as the monitor reads it: one set of long-lived clients, every few seconds.

`matterfab.kafka.group_lag` opens fresh clients per call, right for a CLI run once; the monitor
polls all groups every few seconds, so it keeps one admin client and one group-less consumer
(for log-end offsets) open and reopens them only after a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.kafka import PartitionLag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupLag:
    """The lag of one consumer group over every partition of the topics it committed on."""

    group: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        """Messages the group still has to process, over all its partitions."""
        return sum(p.lag for p in self.partitions)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (`/api/status`, `matterfab lag --json`)."""
        return {
            "group": self.group,
            "lag": self.total,
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "end": p.end,
                    "lag": p.lag,
                }
                for p in self.partitions
            ],
        }


def lag_rows(
    committed: dict[TopicPartition, int],
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int],
) -> tuple[PartitionLag, ...]:
    """Per-partition lag of a group: every partition of its topics, committed or not."""
    rows = []
    for tp in sorted(partitions):
        done = committed.get(tp)
        end = ends.get(tp, 0)
        rows.append(PartitionLag(tp.topic, tp.partition, done, end, max(0, end - (done or 0))))
    return tuple(rows)


class LagReader:
    """Reads the lag of every consumer group through clients it keeps open."""

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self._ends: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                **{
                    **kafka.client_options(self.settings),
                    "client_id": f"{self.settings.client_id}-monitor",
                }
            )
            await kafka.start(admin, self.settings, "admin client")
            self._admin = admin
        if self._ends is None:
            ends = kafka.consumer(self.settings, group_id=None)
            await kafka.start(ends, self.settings, "end offsets")
            self._ends = ends
        return self._admin, self._ends

    async def close(self) -> None:
        """Close the clients (they are reopened on the next read)."""
        admin, ends = self._admin, self._ends
        self._admin = self._ends = None
        try:
            if ends is not None:
                await ends.stop()
        finally:
            if admin is not None:
                await admin.close()

    async def describe(self, groups: list[str]) -> dict[str, kafka.GroupState]:
        """Each group's state and members (on failure the clients are closed and it raises)."""
        try:
            admin, _ = await self._clients()
            return {g: await kafka.describe_group(admin, g) for g in groups}
        except BaseException:
            await self.close()
            raise

    async def read(self, only: str | None = None) -> list[GroupLag]:
        """Lag of every group (or only group `only`), sorted by name; groups never committed
        anywhere are listed with no partitions. On failure the clients are closed and the
        error raised, so the next call starts afresh."""
        try:
            return await self._read(only)
        except BaseException:
            await self.close()
            raise

    async def _read(self, only: str | None) -> list[GroupLag]:
        admin, ends = await self._clients()
        if only is not None:
            groups = [only]
        else:
            groups = sorted({str(g[0]) for g in await admin.list_consumer_groups()})
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            try:
                raw = await admin.list_consumer_group_offsets(group)
            except KafkaError as exc:
                # One group the broker cannot answer for (e.g. stuck rebalancing) must not
                # hide the lag of every other group.
                log.warning("lag of group %s unavailable: %s", group, exc)
                raw = {}
            committed[group] = {tp: m.offset for tp, m in raw.items() if m.offset >= 0}
        topics = {tp.topic for offsets in committed.values() for tp in offsets}
        partitions = await self._partitions(admin, topics)
        end_offsets: dict[TopicPartition, int] = (
            await ends.end_offsets(partitions) if partitions else {}
        )
        result = []
        for group in groups:
            mine = {tp.topic for tp in committed[group]}
            parts = [tp for tp in partitions if tp.topic in mine]
            result.append(GroupLag(group, lag_rows(committed[group], parts, end_offsets)))
        return result

    @staticmethod
    async def _partitions(admin: AIOKafkaAdminClient, topics: set[str]) -> list[TopicPartition]:
        if not topics:
            return []
        # Never name a missing topic in a metadata request: brokers may auto-create it.
        known = set(await admin.list_topics())
        wanted = sorted(t for t in topics if t in known)
        described = await admin.describe_topics(wanted) if wanted else []
        result: list[TopicPartition] = []
        for topic in described:
            if topic["error_code"]:
                continue
            result.extend(
                TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]
            )
        return sorted(result)
