"""The pipeline end to end on a local stack the bench starts itself (free ports, temp folder).

For each configuration (instances per service) it starts the services as processes (each with
its own metrics port) and times orders from submit to `completed` (followed on
`mfg.order-events`). The first order after the services start is the cold one (no warm-up
before it); the same size again is the warm one, then any further sizes. A sampler records
every process's peak RSS and CPU every 0.2 s (the main process and its children, e.g. the
builder's worker processes, separately; broker and S3 server included) and how often the
broker rewrote its state snapshot. Around each order the bench scrapes each service's S3
request counter and reads the topics' end offsets; after it, it reads the order's records back
(`bench.traffic`): records and bytes per topic, and per-device latencies.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import traffic
from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import ORDER_EVENTS, WORK_ORDERS
from matterfab.stack import HOST, LocalStack, StackPorts
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


@dataclass
class FileWrites:
    """How often a file was rewritten (its mtime changed) between two takes, and its size."""

    writes: int = 0
    max_bytes: int = 0
    last_bytes: int = 0
    mtime_ns: int | None = None

    def as_dict(self) -> dict[str, int]:
        """JSON form."""
        return {"writes": self.writes, "max_bytes": self.max_bytes, "last_bytes": self.last_bytes}


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process's live threads, summed by thread name."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return out


@dataclass
class Taken:
    """What a sampler saw between two takes."""

    processes: dict[str, dict[str, Any]]  # name -> Peak.as_dict()
    files: dict[str, dict[str, int]]  # name -> FileWrites.as_dict()
    threads: dict[str, dict[str, float]]  # process name -> thread name -> CPU seconds


class RssSampler:
    """Samples the RSS of named processes and their children every `interval` seconds.

    It also watches `files` (name -> path) for rewrites, and splits the CPU of the processes
    named in `threads_of` by thread name. The embedded broker rewrites its whole state
    (`kafka.json`) from a thread named `autosave` about once a second while anything changed,
    so the snapshot count and size and that thread's CPU over an order show what the broker's
    CPU per device goes into as the log grows.
    """

    def __init__(
        self,
        pids: dict[str, int],
        interval: float = 0.2,
        files: dict[str, Path] | None = None,
        threads_of: tuple[str, ...] = (),
    ):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.peaks: dict[str, Peak] = {name: Peak() for name in pids}
        self.files = dict(files or {})
        self.writes: dict[str, FileWrites] = {name: FileWrites() for name in self.files}
        self.thread_pids = {name: pids[name] for name in threads_of if name in pids}
        self.threads_start: dict[str, dict[str, float]] = {}
        self.threads_last: dict[str, dict[str, float]] = {}
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
        return self.take_all().processes

    def take_all(self) -> Taken:
        """Peaks, file rewrites and thread CPU since the last take, then start over."""
        self._sample()
        with self._lock:
            peaks = self.peaks
            self.peaks = {
                name: Peak(cpu_start=p.cpu_last, main_cpu_start=p.main_cpu_last)
                for name, p in peaks.items()
            }
            writes = self.writes
            self.writes = {
                name: FileWrites(last_bytes=w.last_bytes, mtime_ns=w.mtime_ns)
                for name, w in writes.items()
            }
            threads = {
                name: {
                    thread: round(cpu - self.threads_start.get(name, {}).get(thread, 0.0), 3)
                    for thread, cpu in last.items()
                }
                for name, last in self.threads_last.items()
            }
            self.threads_start = {name: dict(last) for name, last in self.threads_last.items()}
        return Taken(
            {name: p.as_dict() for name, p in peaks.items()},
            {name: w.as_dict() for name, w in writes.items()},
            threads,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for name, path in self.files.items():
            try:
                st = path.stat()
            except OSError:
                continue
            with self._lock:
                w = self.writes[name]
                if w.mtime_ns is not None and st.st_mtime_ns != w.mtime_ns:
                    w.writes += 1
                w.mtime_ns = st.st_mtime_ns
                w.last_bytes = st.st_size
                w.max_bytes = max(w.max_bytes, st.st_size)
        for name, pid in self.thread_pids.items():
            now = thread_cpu(pid)
            with self._lock:
                last = self.threads_last.setdefault(name, {})
                for thread, cpu in now.items():
                    last[thread] = max(last.get(thread, 0.0), cpu)
                self.threads_start.setdefault(name, dict(now))
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
async def submit_and_wait(
    settings: KafkaSettings, order: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send a work order; return seconds from send to accepted and to completed."""
    order_id = order["order_id"]
    cons, tps = await traffic.assigned(settings, [ORDER_EVENTS])
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


# Rows of the per-device cost table: a service's instances add up; builder includes its workers.
COST_ROWS = (*SERVICES, "kafka", "s3")


def cpu_per_device(usage: dict[str, dict[str, Any]], quantity: int) -> dict[str, float]:
    """CPU ms per device of each process kind (instances summed) and of all of them."""
    spent: dict[str, float] = dict.fromkeys(COST_ROWS, 0.0)
    for name, peak in usage.items():
        kind = traffic.role(name)
        spent[kind] = spent.get(kind, 0.0) + peak["cpu_s"]
    table = {kind: round(1000 * cpu / quantity, 3) for kind, cpu in spent.items()}
    table["total"] = round(1000 * sum(spent.values()) / quantity, 3)
    return table


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
    metrics_ports: dict[str, int] = field(default_factory=dict)  # running instance -> port

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

    @property
    def broker_snapshot(self) -> Path:
        """The embedded broker's state snapshot (`noida-db --data-dir`/kafka.json)."""
        return self.stack.home / "data" / "kafka" / "kafka.json"

    def infra_pids(self) -> dict[str, int]:
        """PIDs of the broker (`kafka`) and the S3 server (`s3`)."""
        status = self.stack.status()
        return {k: status[k]["pid"] for k in ("kafka", "s3") if status[k]["pid"]}

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
        log_start: dict[str, int] = {}  # logs are appended to: only this start's part counts
        for service in SERVICES:
            for i in range(1, instances.get(service, 1) + 1):
                name = f"{service}-{i}"
                port = _free_port()
                own = {
                    f"MATTERFAB_{service.upper()}_INSTANCE_ID": name,
                    f"MATTERFAB_{service.upper()}_METRICS_PORT": str(port),
                    **env,
                }
                log_start[name] = len(self.services.log(name))
                self.stack.start_service(name, [*self.service_cmd, "serve", service], env=own)
                self.services.names.append(name)  # so Services.stop_all stops it
                self.metrics_ports[name] = port
        try:
            deadline = time.monotonic() + 120
            for name in self.services.names:
                while "consuming" not in self.services.log(name)[log_start[name] :]:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} did not start:\n{self.services.log(name)}")
                    if name not in self.stack.running_services():
                        raise RuntimeError(f"{name} exited:\n{self.services.log(name)}")
                    time.sleep(0.2)
            yield self.stack.running_services()
        finally:
            self.services.stop_all()
            self.metrics_ports.clear()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def measure_order(
    bench: Bench,
    sampler: RssSampler,
    size: int,
    iterations: int,
    profile: Any = None,
    core_ref: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Send one order and wait for it; its time, CPU, memory, requests, records, latencies.

    `core_ref()`, if given, measures the core library's CPU ms per device on one process; it
    runs just before and just after the order (the services idle), and the order keeps the
    mean: on a shared host the CPU a unit of work costs drifts with the neighbours' load, so
    the pipeline's CPU is compared with the core's measured beside it.
    """
    core_before = core_ref() if core_ref is not None else None
    order = bench.order(size, iterations)
    since = asyncio.run(traffic.end_offsets(bench.kafka))
    s3_before = traffic.scrape(bench.metrics_ports)
    sampler.take_all()
    prof = profile() if profile is not None else None
    try:
        timed = asyncio.run(submit_and_wait(bench.kafka, order, 60 + size * 0.5))
    finally:
        if prof is not None:
            prof.finish()
    taken = sampler.take_all()
    until = asyncio.run(traffic.end_offsets(bench.kafka))
    s3_after = traffic.scrape(bench.metrics_ports)
    timed["rss"] = taken.processes
    timed["cpu_ms_per_device"] = cpu_per_device(taken.processes, size)
    timed["broker_snapshot"] = {
        **taken.files.get("broker_snapshot", {}),
        "threads_cpu_ms_per_device": {
            thread: round(1000 * cpu / size, 3)
            for thread, cpu in sorted(taken.threads.get("kafka", {}).items())
            if cpu
        },
    }
    timed["s3_requests"] = traffic.requests(s3_before, s3_after, size)
    back = asyncio.run(traffic.read_back(bench.kafka, since, {order["order_id"]}, until))
    timed["kafka"] = back.traffic(size)
    timed["latency"] = back.latency()
    if prof is not None:
        timed["profile"] = prof.result()
    if core_ref is not None and core_before is not None:
        core = [core_before, core_ref()]
        timed["core_cpu_ms_per_device"] = round(sum(core) / 2, 3)
        timed["core_cpu_ms_per_device_runs"] = core
    return timed


def run_config(
    bench: Bench,
    name: str,
    instances: dict[str, int],
    sizes: list[int],
    iterations: int = 10000,
    profile: Any = None,
    core_ref: Callable[[], float] | None = None,
    cold: bool = True,
) -> dict[str, Any]:
    """Orders on freshly started services: the first size cold, then every size warm.

    The cold order is the first the services see after they report `consuming` (no warm-up
    order before it: imports, worker processes, profile loading and group joins land in it).
    `profile(pids, label)`, if given, makes a recorder for the cold and the first warm order
    (label `<size>-cold`, `<size>`); `core_ref` as in `measure_order`. `cold=False`: a small
    unmeasured warm-up order instead of the cold one.
    """
    results: dict[str, Any] = {"name": name, "instances": instances, "orders": []}
    with bench.running(instances) as pids:
        results["pids"] = pids
        sampler = RssSampler(
            {**pids, **bench.infra_pids()},
            files={"broker_snapshot": bench.broker_snapshot},
            threads_of=("kafka",),
        )
        sampler.start()
        try:
            plan = [(size, False) for size in sizes]
            if cold:
                plan.insert(0, (sizes[0], True))
            else:
                warm_up = bench.order(8, iterations)
                results["warm_up"] = asyncio.run(submit_and_wait(bench.kafka, warm_up, 300))
            for i, (size, is_cold) in enumerate(plan):
                recorder = None
                if profile is not None and i < (2 if cold else 1):
                    label = f"{size}-cold" if is_cold else str(size)
                    recorder = functools.partial(profile, pids, label)
                timed = measure_order(bench, sampler, size, iterations, recorder, core_ref)
                timed["cold"] = is_cold
                log.info(
                    "%s: %s",
                    name,
                    {k: timed.get(k) for k in ("quantity", "cold", "seconds", "devices_per_s")},
                )
                results["orders"].append(timed)
        finally:
            sampler.stop()
    if cold:
        first, again = results["orders"][0], results["orders"][1]  # one size, cold then warm
        if first.get("devices_per_s") and again.get("devices_per_s"):
            results["first_order_over_warm"] = round(first["seconds"] / again["seconds"], 3)
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
        since = asyncio.run(traffic.end_offsets(bench.kafka, traffic.LATENCY_TOPICS))

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
        paced_end = time.monotonic()
        deadline = paced_end + 120
        lat: dict[str, Any] = {}
        ready: dict[str, int] = {}
        while time.monotonic() < deadline:
            back = asyncio.run(
                traffic.read_back(bench.kafka, since, set(ids), topics=traffic.LATENCY_TOPICS)
            )
            lat = back.latency()
            ready = {}
            for dev in back.ready_at:
                order_id = dev.rpartition("/")[0]
                ready[order_id] = ready.get(order_id, 0) + 1
            if lat["devices"] >= expected:
                break
            time.sleep(1)
    # An order short of images after the wait is lost work, not latency: name it.
    incomplete = {i: ready.get(i, 0) for i in ids if ready.get(i, 0) < batch}
    if incomplete:
        log.warning("paced run: %d orders short of images: %s", len(incomplete), incomplete)
    return {
        "rate_devices_per_s": round(rate, 2),
        "seconds": seconds,
        "orders": len(ids),
        "order_size": batch,
        "waited_after_pacing_s": round(time.monotonic() - paced_end, 1),
        "incomplete_orders": incomplete,
        "latency": lat,
    }
