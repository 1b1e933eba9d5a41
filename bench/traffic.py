"""What one order costs in requests and records, and how long each device waited.

- S3 requests: every service counts the requests it sends to the store
  (`matterfab_s3_requests_total{op}`, `matterfab.metrics`); the bench scrapes each instance's
  `/metrics` before and after an order, so the difference is that order's requests, dependency
  probes and re-drive checks included (what a store bills). `order fetch` is not part of it.
- Kafka: the end offsets of every topic before and after an order give its records per topic;
  reading those records back gives their bytes (key + value + headers, the payload a client
  sends; the broker's batch framing is not counted), when each topic saw its first and last
  record (seconds after the work order's record: where a slow start waits) and, from the same
  records, per-device latencies (below).

Latencies per device (seconds):
- attested→ready: `ImageReady.at` minus the Kafka timestamp of the `LotAttested` record that
  carries the device (when the signer published its lot), so it includes the time the lot
  waited in the topic for a builder: under a burst that is the backlog, not the work.
- attested→ready published: the same to the ImageReady record's own timestamp (what a station
  sees: a batch's results are sent when the whole batch is done).
- issued→ready: `ImageReady.at` minus the device's `issued_at` in its `LedgerLot`.
"""

from __future__ import annotations

import json
import statistics
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import DAC_LEDGER, DEVICES_ATTESTED, IMAGES_READY, WORK_ORDERS
from matterfab.messages.base import device_id
from matterfab.topics import ALL_TOPICS

S3_METRIC = "matterfab_s3_requests"  # the family name (samples end in _total)
LATENCY_TOPICS = (DEVICES_ATTESTED, IMAGES_READY, DAC_LEDGER)


# --------------------------------------------------------------------------- S3 requests
def scrape(ports: dict[str, int], timeout: float = 5.0) -> dict[str, dict[str, float]]:
    """S3 requests each instance has sent so far, by op: instance -> op -> count.

    An instance whose `/metrics` does not answer is left out (`requests` then says so).
    """
    counts: dict[str, dict[str, float]] = {}
    for name, port in ports.items():
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue
        counts[name] = s3_requests_in(text)
    return counts


def s3_requests_in(text: str) -> dict[str, float]:
    """The S3 request counts by op in one Prometheus exposition."""
    ops: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != S3_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{S3_METRIC}_total":
                ops[sample.labels["op"]] = sample.value
    return ops


def role(instance: str) -> str:
    """`signer-2` -> `signer` (broker and store names stay as they are)."""
    base, _, number = instance.rpartition("-")
    return base if base and number.isdigit() else instance


def requests(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], quantity: int
) -> dict[str, Any]:
    """Requests sent between two scrapes: total, by op and by service, each also per device."""
    by_op: dict[str, float] = defaultdict(float)
    by_service: dict[str, float] = defaultdict(float)
    for name, ops in after.items():
        for op, value in ops.items():
            sent = value - before.get(name, {}).get(op, 0.0)
            if sent:
                by_op[op] += sent
                by_service[role(name)] += sent
    total = sum(by_op.values())

    def per(values: dict[str, float]) -> dict[str, float]:
        return {k: round(v / quantity, 4) for k, v in sorted(values.items())}

    return {
        "total": int(total),
        "per_device": round(total / quantity, 4),
        "by_op": {k: int(v) for k, v in sorted(by_op.items())},
        "by_op_per_device": per(by_op),
        "by_service_per_device": per(by_service),
        "unscraped": sorted(set(before) ^ set(after)),  # instances missing from a scrape
    }


# --------------------------------------------------------------------------- Kafka
async def assigned(settings: KafkaSettings, topics: tuple[str, ...] | list[str]) -> Any:
    """A group-less consumer assigned every partition of `topics`, and those partitions."""
    cons = kafka.consumer(settings, group_id=None)
    await cons.start()
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = cons.partitions_for_topic(topic)
        if not parts:
            await kafka.refresh_metadata(cons)
            parts = cons.partitions_for_topic(topic) or set()
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    cons.assign(tps)
    return cons, tps


async def end_offsets(
    settings: KafkaSettings, topics: tuple[str, ...] = ALL_TOPICS
) -> dict[TopicPartition, int]:
    """The end offset of every partition of `topics` (all of the pipeline's by default)."""
    cons, tps = await assigned(settings, topics)
    try:
        return dict(await cons.end_offsets(tps))
    finally:
        await cons.stop()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 4)


def summary(values: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max/mean of latencies in seconds."""
    return {
        "n": len(values),
        "p50_s": _pct(values, 0.50),
        "p90_s": _pct(values, 0.90),
        "p99_s": _pct(values, 0.99),
        "max_s": round(max(values), 4) if values else None,
        "mean_s": round(statistics.fmean(values), 4) if values else None,
    }


def _after(ms: int | None, start: int) -> float | None:
    return None if ms is None else round((ms - start) / 1000, 3)


@dataclass
class ReadBack:
    """What the records of a window of the log say: traffic per topic, times per device."""

    records: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    offsets: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # end - start
    first_ms: dict[str, int] = field(default_factory=dict)  # topic -> earliest record timestamp
    last_ms: dict[str, int] = field(default_factory=dict)  # topic -> latest record timestamp
    attested: dict[str, float] = field(default_factory=dict)  # device -> LotAttested timestamp
    ready_at: dict[str, float] = field(default_factory=dict)  # device -> ImageReady.at
    ready_ts: dict[str, float] = field(default_factory=dict)  # device -> its record's timestamp
    issued: dict[str, float] = field(default_factory=dict)  # device -> LedgerLot issued_at

    def add(self, topic: str, rec: Any, order_ids: set[str]) -> None:
        """Count one record; note the device times it carries for the orders asked about."""
        self.records[topic] += 1
        self.first_ms[topic] = min(self.first_ms.get(topic, rec.timestamp), rec.timestamp)
        self.last_ms[topic] = max(self.last_ms.get(topic, rec.timestamp), rec.timestamp)
        headers = sum(len(k) + len(v or b"") for k, v in rec.headers or ())
        self.bytes[topic] += len(rec.key or b"") + len(rec.value or b"") + headers
        if topic not in LATENCY_TOPICS:
            return
        data = json.loads(rec.value)
        order_id = data.get("order_id")
        if order_id not in order_ids:
            return
        kind = data.get("type")
        if kind == "lot-attested/v1":
            for d in data["devices"]:
                self.attested.setdefault(device_id(order_id, d["index"]), rec.timestamp / 1000)
        elif kind == "image-ready/v1":
            self.ready_at.setdefault(data["device_id"], _ts(data["at"]))
            self.ready_ts.setdefault(data["device_id"], rec.timestamp / 1000)
        elif kind == "dac-ledger-lot/v1":
            for dac in data["dacs"]:
                self.issued.setdefault(dac["device_id"], _ts(dac["issued_at"]))

    def traffic(self, quantity: int) -> dict[str, Any]:
        """Records and bytes, total and per topic, each also per device of the order; per topic
        also its first and last record, in seconds after the first work order record."""
        start = self.first_ms.get(WORK_ORDERS, min(self.first_ms.values(), default=0))
        topics = {
            t: {
                "records": self.records.get(t, 0),
                "offsets": self.offsets.get(t, 0),
                "bytes": self.bytes.get(t, 0),
                "records_per_device": round(self.records.get(t, 0) / quantity, 4),
                "bytes_per_device": round(self.bytes.get(t, 0) / quantity, 1),
                "first_s": _after(self.first_ms.get(t), start),
                "last_s": _after(self.last_ms.get(t), start),
            }
            for t in ALL_TOPICS
            if self.offsets.get(t) or self.records.get(t)
        }
        records, size = sum(self.records.values()), sum(self.bytes.values())
        return {
            "records": records,
            "bytes": size,
            "records_per_device": round(records / quantity, 4),
            "bytes_per_device": round(size / quantity, 1),
            "topics": topics,
        }

    def latency(self) -> dict[str, Any]:
        """Per-device latency summaries (see the module docstring)."""
        both = [d for d in self.ready_at if d in self.attested]
        return {
            "devices": len(self.ready_at),
            "attested_to_ready": summary([self.ready_at[d] - self.attested[d] for d in both]),
            "attested_to_ready_published": summary(
                [self.ready_ts[d] - self.attested[d] for d in both if d in self.ready_ts]
            ),
            "issued_to_ready": summary(
                [self.ready_at[d] - self.issued[d] for d in self.ready_at if d in self.issued]
            ),
        }


async def read_back(
    settings: KafkaSettings,
    since: dict[TopicPartition, int],
    order_ids: set[str],
    until: dict[TopicPartition, int] | None = None,
    topics: tuple[str, ...] = ALL_TOPICS,
) -> ReadBack:
    """Every record of `topics` from `since` up to `until` (default: the current ends)."""
    cons, tps = await assigned(settings, topics)
    back = ReadBack()
    try:
        ends = dict(until) if until is not None else dict(await cons.end_offsets(tps))
        for tp in tps:
            ends.setdefault(tp, since.get(tp, 0))
            cons.seek(tp, since.get(tp, 0))
            back.offsets[tp.topic] += ends[tp] - since.get(tp, 0)
        remaining = {tp for tp in tps if ends[tp] > since.get(tp, 0)}
        if not remaining:
            return back
        cons.pause(*(set(tps) - remaining))
        while remaining:
            batch = await cons.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, recs in batch.items():
                for rec in recs:
                    if rec.offset < ends[tp]:
                        back.add(tp.topic, rec, order_ids)
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
                    cons.pause(tp)
            for tp in list(remaining):
                if await cons.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    cons.pause(tp)
    finally:
        await cons.stop()
    return back
