"""The pipeline's Kafka topics: read `deploy/topics.yaml` and apply it to any cluster.

Applying is idempotent and safe against a live cluster: missing topics are created, existing
topics are never deleted or shrunk; a topic with fewer partitions than listed is grown (more
partitions let more instances work in parallel), and one with more is reported, not touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from matterfab.config import KafkaSettings
from matterfab.errors import StackError
from matterfab.kafka import admin

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule for topic names

# Names the services use; they must all be in topics.yaml (a unit test checks it).
WORK_ORDERS = "mfg.work-orders"
DEVICES_ALLOCATED = "mfg.devices.allocated"
DEVICES_ATTESTED = "mfg.devices.attested"
IMAGES_READY = "mfg.images.ready"
ORDER_EVENTS = "mfg.order-events"
STATION_RESULTS = "mfg.station-results"
DAC_LEDGER = "mfg.dac-ledger"
DEAD_LETTER = "mfg.dead-letter"
# device-key orders: a station's CSR to the signer, and the signer's DAC (or refusal) back.
DAC_REQUESTS = "mfg.dac.requests"
DAC_REPLIES = "mfg.dac.replies"
ALL_TOPICS = (
    WORK_ORDERS,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    STATION_RESULTS,
    DAC_LEDGER,
    DEAD_LETTER,
    DAC_REQUESTS,
    DAC_REPLIES,
)


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the pipeline wants it: name, partition count, retention, other config."""

    name: str
    partitions: int
    retention_ms: int
    config: dict[str, str] = field(default_factory=dict)

    def topic_configs(self) -> dict[str, str]:
        """Broker-side topic configuration (`retention.ms` plus any extra entries)."""
        return {"retention.ms": str(self.retention_ms), **self.config}


@dataclass
class ApplyReport:
    """What `apply_topics` did: created, already present, grown, and left mismatched."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (before, after)
    mismatched: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (has, wants)


def default_topics_file() -> Path:
    """$MATTERFAB_TOPICS_FILE, else `deploy/topics.yaml` of the checkout this package runs from."""
    from matterfab.config import PathSettings  # late: config pulls in pydantic-settings

    named = PathSettings().topics_file
    if named is not None:
        return named
    # shared/matterfab/topics.py -> <repo>/deploy/topics.yaml (also the layout in the image).
    return Path(__file__).resolve().parents[2] / "deploy" / "topics.yaml"


def _parse_spec(item: Any, where: str) -> TopicSpec:
    if not isinstance(item, dict):
        raise StackError(f"{where}: each topic must be a mapping with name and partitions")
    name = item.get("name")
    if not isinstance(name, str) or not _TOPIC_NAME.match(name):
        raise StackError(f"{where}: name must be 1..249 of [A-Za-z0-9._-], got {name!r}")
    partitions = item.get("partitions")
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise StackError(f"{where} ({name}): partitions must be an integer >= 1")
    retention = item.get("retention_ms", 604800000)
    if not isinstance(retention, int) or isinstance(retention, bool) or retention < -1:
        raise StackError(f"{where} ({name}): retention_ms must be an integer >= -1")
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise StackError(f"{where} ({name}): config must be a mapping")
    return TopicSpec(name, partitions, retention, {str(k): str(v) for k, v in config.items()})


def load_topics(path: Path | None = None) -> list[TopicSpec]:
    """Read and check a topics file (default: the repository's `deploy/topics.yaml`)."""
    path = path or default_topics_file()
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StackError(f"cannot read topics file {path}: {exc}") from exc
    items = doc.get("topics") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise StackError(f"{path}: expected a non-empty `topics:` list")
    specs = [_parse_spec(item, f"{path}: topics[{i}]") for i, item in enumerate(items)]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StackError(f"{path}: topics listed twice: {', '.join(duplicates)}")
    return specs


async def apply_topics(
    settings: KafkaSettings, specs: list[TopicSpec], replication_factor: int = 1
) -> ApplyReport:
    """Create missing topics and grow under-partitioned ones; never delete or shrink."""
    report = ApplyReport()
    async with admin(settings) as client:
        # Describe only topics that exist: a metadata request naming a missing topic makes
        # brokers with auto-creation on (the embedded one, Kafka's default) create it with
        # default settings, which would defeat the partitions and retention listed here.
        known = set(await client.list_topics())
        wanted = [s.name for s in specs if s.name in known]
        present = {
            t["topic"]: len(t["partitions"])
            for t in (await client.describe_topics(wanted) if wanted else [])
            if not t["error_code"]
        }
        missing = [s for s in specs if s.name not in present]
        if missing:
            response = await client.create_topics(
                [
                    NewTopic(
                        s.name, s.partitions, replication_factor, topic_configs=s.topic_configs()
                    )
                    for s in missing
                ]
            )
            for row in response.topic_errors:
                name, code = row[0], row[1]
                if code == 0:
                    report.created.append(name)
                elif for_code(code) is TopicAlreadyExistsError:
                    # Another `apply` won the race: the topic is there, which is all we want.
                    present[name] = next(s.partitions for s in specs if s.name == name)
                    report.existing.append(name)
                else:
                    message = row[2] if len(row) > 2 else ""
                    raise StackError(
                        f"cannot create topic {name}: {for_code(code).__name__} {message}"
                    )
        grow: dict[str, NewPartitions] = {}
        for spec in specs:
            if spec.name not in present:
                continue
            if spec.name not in report.existing:
                report.existing.append(spec.name)
            has = present[spec.name]
            if has < spec.partitions:
                grow[spec.name] = NewPartitions(spec.partitions)
                report.grown[spec.name] = (has, spec.partitions)
            elif has > spec.partitions:
                report.mismatched[spec.name] = (has, spec.partitions)
        if grow:
            await client.create_partitions(grow)
    return report
