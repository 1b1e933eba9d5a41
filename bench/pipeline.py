"""The pipeline end to end on a local stack the bench starts itself (free ports, temp folder).

For each configuration (instances per service) it starts the services as processes, warms them
up with a small order, then times orders from submit to `completed` (followed on
`mfg.order-events`), while a sampler records each service's peak RSS every 0.2 s (the main
process and its children, e.g. the builder's worker processes, separately). After each order
it reads the order's records back from `mfg.devices.attested`, `mfg.images.ready` and
`mfg.dac-ledger` to compute per-device latencies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import TopicPartition

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import DAC_LEDGER, DEVICES_ATTESTED, IMAGES_READY, ORDER_EVENTS, WORK_ORDERS
from matterfab.stack import LocalStack, StackPorts
from tests.pipeline import Services, work_order

log = logging.getLogger(__name__)

PROFILE = "bench-fff1"
CLI = "matterfab.cli.main"
SERVICES = ("allocator", "signer", "builder", "assembler")


# --------------------------------------------------------------------------- memory
@dataclass
class Peak:
    """Peak RSS (bytes) of one service instance: main process, largest child, all together."""

    main: int = 0
    child_max: int = 0
    children: int = 0  # how many children were seen at most
    total: int = 0
    cpu_start: float | None = None  # CPU seconds (user+system, process and children)
    cpu_last: float = 0.0
    main_cpu_start: float | None = None  # the same, main process only
    main_cpu_last: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON form, in MB and CPU seconds."""
        mb = 1024 * 1024
        return {
            "main_mb": round(self.main / mb, 1),
            "child_max_mb": round(self.child_max / mb, 1),
            "children": self.children,
            "total_mb": round(self.total / mb, 1),
            "cpu_s": round(self.cpu_last - (self.cpu_start or 0.0), 3),
            "main_cpu_s": round(self.main_cpu_last - (self.main_cpu_start or 0.0), 3),
        }


def _cpu(proc: psutil.Process, kids: list[psutil.Process]) -> float:
    total = 0.0
    for p in (proc, *kids):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class RssSampler:
    """Samples the RSS of named processes and their children every `interval` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.peaks: dict[str, Peak] = {name: Peak() for name in pids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        """Begin sampling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def take(self) -> dict[str, dict[str, Any]]:
        """The peaks (and CPU used) since the last `take()`, then start over."""
        self._sample()
        with self._lock:
            peaks = self.peaks
            self.peaks = {
                name: Peak(cpu_start=p.cpu_last, main_cpu_start=p.main_cpu_last)
                for name, p in peaks.items()
            }
        return {name: p.as_dict() for name, p in peaks.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                main = proc.memory_info().rss
                children = proc.children(recursive=True)
                kids = [c.memory_info().rss for c in children]
                cpu = _cpu(proc, children)
                main_cpu = _cpu(proc, [])
            except psutil.Error:
                continue
            with self._lock:
                p = self.peaks[name]
                p.main = max(p.main, main)
                p.child_max = max([p.child_max, *kids])
                p.children = max(p.children, len(kids))
                p.total = max(p.total, main + sum(kids))
                if p.cpu_start is None:
                    p.cpu_start = cpu
                p.cpu_last = max(p.cpu_last, cpu)
                if p.main_cpu_start is None:
                    p.main_cpu_start = main_cpu
                p.main_cpu_last = max(p.main_cpu_last, main_cpu)


# --------------------------------------------------------------------------- orders
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


async def _assigned(settings: KafkaSettings, topics: list[str]) -> Any:
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


async def end_offsets(settings: KafkaSettings) -> dict[TopicPartition, int]:
    """End offsets of the topics latencies are read from (taken before an order is sent)."""
    cons, tps = await _assigned(settings, [DEVICES_ATTESTED, IMAGES_READY, DAC_LEDGER])
    try:
        return dict(await cons.end_offsets(tps))
    finally:
        await cons.stop()


async def submit_and_wait(
    settings: KafkaSettings, order: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send a work order; return seconds from send to accepted and to completed."""
    order_id = order["order_id"]
    cons, tps = await _assigned(settings, [ORDER_EVENTS])
    try:
        await cons.seek_to_end(*tps)
        for tp in tps:
            await cons.position(tp)
        prod = kafka.producer(settings)
        await prod.start()
        try:
            started = time.perf_counter()
            await prod.send_and_wait(WORK_ORDERS, json.dumps(order).encode(), key=order_id.encode())
        finally:
            await prod.stop()
        result: dict[str, Any] = {"order_id": order_id, "quantity": order["quantity"]}
        deadline = started + timeout
        while time.perf_counter() < deadline:
            batch = await cons.getmany(timeout_ms=200)
            for recs in batch.values():
                for rec in recs:
                    if rec.key is None or rec.key.decode() != order_id:
                        continue
                    status = json.loads(rec.value)["status"]
                    now = time.perf_counter() - started
                    if status == "accepted":
                        result["accepted_s"] = round(now, 3)
                    elif status in ("completed", "rejected", "failed"):
                        result["status"] = status
                        result["seconds"] = round(now, 3)
                        if status == "completed":
                            result["devices_per_s"] = round(order["quantity"] / now, 2)
                        return result
        raise TimeoutError(f"order {order_id} not finished after {timeout:.0f}s")
    finally:
        await cons.stop()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def latencies(
    settings: KafkaSettings, since: dict[TopicPartition, int], order_ids: set[str]
) -> dict[str, Any]:
    """Per-device latencies of the given orders, from records written after `since`.

    - attested→ready: ImageReady.at minus the Kafka timestamp of the device's DeviceAttested
      record (when the signer published it), so it includes the time the message waited in the
      topic for a builder: under a burst that is the backlog, not the work.
    - attested→ready published: the same to the ImageReady record's own timestamp (what a
      station sees: the runtime sends a batch's results when the whole batch is done).
    - issued→ready: ImageReady.at minus LedgerEntry.issued_at (whole seconds: coarse).
    """
    cons, tps = await _assigned(settings, [DEVICES_ATTESTED, IMAGES_READY, DAC_LEDGER])
    attested: dict[str, float] = {}
    ready_at: dict[str, float] = {}
    ready_ts: dict[str, float] = {}
    issued: dict[str, float] = {}
    try:
        ends = await cons.end_offsets(tps)
        for tp in tps:
            cons.seek(tp, since.get(tp, 0))
        remaining = {tp for tp in tps if ends[tp] > since.get(tp, 0)}
        while remaining:
            batch = await cons.getmany(timeout_ms=1000, max_records=5000)
            for tp, recs in batch.items():
                for rec in recs:
                    data = json.loads(rec.value)
                    if data.get("order_id") not in order_ids:
                        continue
                    dev = data["device_id"]
                    if tp.topic == DEVICES_ATTESTED:
                        attested.setdefault(dev, rec.timestamp / 1000)
                    elif tp.topic == IMAGES_READY:
                        ready_at.setdefault(dev, _ts(data["at"]))
                        ready_ts.setdefault(dev, rec.timestamp / 1000)
                    else:
                        issued.setdefault(dev, _ts(data["issued_at"]))
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await cons.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await cons.stop()
    both = [d for d in ready_at if d in attested]
    return {
        "devices": len(ready_at),
        "attested_to_ready": summary([ready_at[d] - attested[d] for d in both]),
        "attested_to_ready_published": summary(
            [ready_ts[d] - attested[d] for d in both if d in ready_ts]
        ),
        "issued_to_ready_coarse": summary(
            [ready_at[d] - issued[d] for d in ready_at if d in issued]
        ),
    }


# --------------------------------------------------------------------------- the stack
@dataclass
class Bench:
    """A local stack with a test profile, and the services running on it."""

    home: Path
    # How to run a service: this + ["serve", name]. Override to bench a patched build.
    service_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", CLI])
    stack: LocalStack = field(init=False)
    services: Services = field(init=False)
    counter: int = 0

    def __post_init__(self) -> None:
        self.stack = LocalStack(self.home / "stack", ports=StackPorts.free())
        self.services = Services(self.stack)

    def start(self) -> None:
        """Start broker and store, and make the test attestation profile."""
        from matterfab import profiles

        self.stack.start()
        profiles.init_test_profile(
            PROFILE, 0xFFF1, 0x8000, profiles_dir=self.stack.home / "profiles"
        )

    def stop(self) -> None:
        """Stop services, store and broker."""
        self.services.stop_all()
        self.stack.stop()

    @property
    def kafka(self) -> KafkaSettings:
        """Settings of the stack's broker."""
        return self.stack.kafka_settings()

    def order(self, quantity: int, iterations: int = 10000) -> dict[str, Any]:
        """A new work order for the bench profile."""
        self.counter += 1
        order_id = f"BENCH-{int(time.time())}-{self.counter}-{quantity}"
        return work_order(
            order_id,
            quantity,
            PROFILE,
            commissioning={"iteration_count": iterations, "rotating_device_id": True},
        )

    @contextmanager
    def running(self, instances: dict[str, int], **env: str) -> Iterator[dict[str, int]]:
        """Run `instances[service]` instances of each service; yields name -> PID."""
        env = {"MATTERFAB_LOG_LEVEL": "INFO", **env}
        for service in SERVICES:
            for i in range(1, instances.get(service, 1) + 1):
                name = f"{service}-{i}"
                own = {f"MATTERFAB_{service.upper()}_INSTANCE_ID": name, **env}
                self.stack.start_service(name, [*self.service_cmd, "serve", service], env=own)
                self.services.names.append(name)  # so Services.stop_all stops it
        try:
            deadline = time.monotonic() + 120
            for name in self.services.names:
                while "consuming" not in self.services.log(name):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} did not start:\n{self.services.log(name)}")
                    if name not in self.stack.running_services():
                        raise RuntimeError(f"{name} exited:\n{self.services.log(name)}")
                    time.sleep(0.2)
            yield self.stack.running_services()
        finally:
            self.services.stop_all()


def run_config(
    bench: Bench,
    name: str,
    instances: dict[str, int],
    sizes: list[int],
    iterations: int = 10000,
    profile: Any = None,
) -> dict[str, Any]:
    """Time one order per size with the given instances; peaks and latencies per order."""
    results: dict[str, Any] = {"name": name, "instances": instances, "orders": []}
    with bench.running(instances) as pids:
        results["pids"] = pids
        warm = asyncio.run(submit_and_wait(bench.kafka, bench.order(8, iterations), 300))
        results["warm_up"] = warm
        status = bench.stack.status()
        infra = {k: status[k]["pid"] for k in ("kafka", "s3") if status[k]["pid"]}
        sampler = RssSampler({**pids, **infra})
        sampler.start()
        try:
            for size in sizes:
                since = asyncio.run(end_offsets(bench.kafka))
                order = bench.order(size, iterations)
                sampler.take()
                prof = profile(pids, size) if profile is not None and size == sizes[0] else None
                try:
                    timed = asyncio.run(submit_and_wait(bench.kafka, order, 60 + size * 0.5))
                finally:
                    if prof is not None:
                        prof.finish()
                timed["rss"] = sampler.take()
                timed["latency"] = asyncio.run(latencies(bench.kafka, since, {order["order_id"]}))
                if prof is not None:
                    timed["profile"] = prof.result()
                log.info("%s: %s", name, {k: timed.get(k) for k in ("quantity", "seconds")})
                results["orders"].append(timed)
        finally:
            sampler.stop()
    return results


def run_paced(
    bench: Bench,
    instances: dict[str, int],
    rate: float,
    seconds: float,
    batch: int = 10,
    iterations: int = 10000,
) -> dict[str, Any]:
    """Latency under a steady load: orders of `batch` devices at `rate` devices/s."""
    with bench.running(instances):
        asyncio.run(submit_and_wait(bench.kafka, bench.order(8, iterations), 300))
        since = asyncio.run(end_offsets(bench.kafka))

        async def pace() -> list[str]:
            prod = kafka.producer(bench.kafka)
            await prod.start()
            ids: list[str] = []
            try:
                interval = batch / rate
                started = time.perf_counter()
                n = 0
                while time.perf_counter() - started < seconds:
                    order = bench.order(batch, iterations)
                    ids.append(order["order_id"])
                    await prod.send_and_wait(
                        WORK_ORDERS, json.dumps(order).encode(), key=order["order_id"].encode()
                    )
                    n += 1
                    await asyncio.sleep(max(0.0, started + n * interval - time.perf_counter()))
            finally:
                await prod.stop()
            return ids

        ids = asyncio.run(pace())
        # The last orders finish within a few seconds; wait for their images.
        expected = len(ids) * batch
        deadline = time.monotonic() + 120
        lat: dict[str, Any] = {}
        while time.monotonic() < deadline:
            lat = asyncio.run(latencies(bench.kafka, since, set(ids)))
            if lat["devices"] >= expected:
                break
            time.sleep(1)
    return {
        "rate_devices_per_s": round(rate, 2),
        "seconds": seconds,
        "orders": len(ids),
        "order_size": batch,
        "latency": lat,
    }
