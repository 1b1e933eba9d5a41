"""End to end with factory stations: images flashed once each, bindings complete and consistent.

Each test uses its own line (consumer group) and `--order`, because a new group starts at the
earliest offset and would otherwise see the images of every earlier order of the session.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import IMAGES_READY, ORDER_EVENTS, STATION_RESULTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from matterfab.topics import load_topics
from tests.pipeline import Services, matterfab, work_order, write_order
from tests.sealed import ensure_line

pytestmark = pytest.mark.timeout(600)

BINDINGS_HEADER = "device_id,serial_num,station_id,mac,flashed_at,dac_serial,dac_sha256"
IMAGE_PARTITIONS = next(t.partitions for t in load_topics() if t.name == IMAGES_READY)

# A stand-in for esptool: "flashes" by copying the partition into a folder after a pause (so a
# test can kill the station mid-flash) and prints the chip's MAC the way esptool does.
FAKE_ESPTOOL = """
import hashlib, pathlib, shutil, sys, time
partition, device_id, out = sys.argv[1:4]
time.sleep(float(sys.argv[4]))
dest = pathlib.Path(out) / device_id
dest.mkdir(parents=True, exist_ok=True)
shutil.copy(partition, dest / "partition.bin")
with open(pathlib.Path(out) / "flash.log", "a") as log:
    log.write(device_id + "\\n")
mac = hashlib.sha256(device_id.encode()).digest()[:6]
print("Chip is ESP32-C3")
print("MAC: " + ":".join(f"{b:02X}" for b in mac))
print("Hash of data verified.")
"""


class Stations:
    """Station processes started by this test, stopped by PID at the end."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.names: list[str] = []

    def start(self, name: str, line: str, order: str, *options: str) -> int:
        # Each test's line is a sealing line too (issue #20): registered once, its key in the
        # stack's state folder, where the station finds it; the test's order names the line.
        ensure_line(self.stack, line)
        argv = [sys.executable, "-m", "matterfab.cli.main", "station", "run"]
        argv += ["--station-id", name, "--line", line, "--order", order, *options]
        pid = self.stack.start_service(name, argv)
        if name not in self.names:
            self.names.append(name)
        return pid

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        """This run's JSON log lines (a restarted station appends to the same file)."""
        path = self.stack.log_path(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        run = text.rsplit("\n=== ", 1)[-1]
        return [json.loads(line) for line in run.splitlines() if line.startswith("{")]

    def wait_assigned(self, names: list[str], timeout: float = 120) -> None:
        """Until the stations together hold every partition, each a share (group stable)."""

        def shares() -> list[set[str]] | None:
            out = []
            for name in names:
                seen = [ln for ln in self.log_lines(name) if ln["msg"] == "partitions assigned"]
                if not seen:
                    return None
                out.append(set(seen[-1]["partitions"]))
            return out

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = shares()
            if got and all(got) and sum(map(len, got)) == len(set().union(*got)):
                if len(set().union(*got)) == IMAGE_PARTITIONS:
                    return
            time.sleep(0.3)
        raise AssertionError(f"stations {names} never shared the partitions: {shares()}")

    def stop_all(self) -> None:
        for name in reversed(self.names):
            self.stack.stop_service(name)


@pytest.fixture
def stations(stack: LocalStack, pipeline: Services) -> Iterator[Stations]:
    group = Stations(stack)
    try:
        yield group
    finally:
        group.stop_all()


def submit(stack: LocalStack, tmp_path: Path, order: dict[str, Any]) -> None:
    done = matterfab(
        stack, "order", "submit", str(write_order(tmp_path, order)), "--wait", "--timeout", "300"
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def csv_rows(store: ObjectStore, key: str) -> list[dict[str, str]] | None:
    raw = await store.get_or_none(key)
    if raw is None:
        return None
    return list(csv.DictReader(io.StringIO(raw.decode())))


async def complete_bindings(store: ObjectStore, order_id: str, n: int) -> list[dict[str, str]]:
    async def check() -> list[dict[str, str]] | None:
        rows = await csv_rows(store, f"orders/{order_id}/bindings.csv")
        return rows if rows is not None and len(rows) >= n else None

    rows: list[dict[str, str]] = await eventually(check, 300, f"{n} bindings of {order_id}")
    raw = await store.get(f"orders/{order_id}/bindings.csv")
    assert raw.decode().splitlines()[0] == BINDINGS_HEADER
    return rows


async def records(settings: KafkaSettings, topic: str, order_id: str) -> list[dict[str, Any]]:
    """Every message of `topic` about `order_id` (keyed by order or by device)."""
    cons = await kafka.topic_reader(settings, topic, "beginning")
    try:
        tps = sorted(cons.assignment(), key=lambda tp: tp.partition)
        ends = await cons.end_offsets(tps)
        out: list[dict[str, Any]] = []
        while True:
            behind = [tp for tp in tps if await cons.position(tp) < ends[tp]]
            if not behind:
                return out
            for recs in (await cons.getmany(*behind, timeout_ms=1000)).values():
                for rec in recs:
                    key = rec.key.decode() if rec.key else ""
                    if key == order_id or key.startswith(order_id + "/"):
                        out.append(json.loads(rec.value))
    finally:
        await kafka.stop_reader(cons)


async def manifest_by_device(store: ObjectStore, order_id: str) -> dict[str, dict[str, str]]:
    rows = await csv_rows(store, f"orders/{order_id}/manifest.csv")
    assert rows is not None
    return {r["device_id"]: r for r in rows}


def flashed_files(out: Path, order_id: str) -> set[str]:
    return {p.parent.name for p in (out / order_id).glob("*/partition.bin")}


async def test_two_stations_flash_every_device_once(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    order_id, line = "ST-TWO", "line-two"
    outs = {name: tmp_path / name for name in ("st-two-a", "st-two-b")}
    for name, out in outs.items():
        stations.start(name, line, order_id, "--out", str(out), "--test-mac-prefix", "02:aa:01")
    stations.wait_assigned(list(outs))
    submit(stack, tmp_path, work_order(order_id, 100, profile, line=line))

    rows = await complete_bindings(store, order_id, 100)
    manifest = await manifest_by_device(store, order_id)
    # Every device exactly once between the two stations, and both did work.
    done = {name: flashed_files(out, order_id) for name, out in outs.items()}
    a, b = done.values()
    assert not a & b
    assert a | b == {f"{i:07d}" for i in range(100)}
    assert a and b, {k: len(v) for k, v in done.items()}
    # The written images are the manifest's, byte for byte (spot check).
    for index in sorted(a)[:3] + sorted(b)[:3]:
        where = outs["st-two-a"] if index in a else outs["st-two-b"]
        data = (where / order_id / index / "partition.bin").read_bytes()
        assert (
            hashlib.sha256(data).hexdigest() == manifest[f"{order_id}/{index}"]["partition_sha256"]
        )
    # bindings.csv: complete, consistent with the manifest, MACs unique.
    assert [r["device_id"] for r in rows] == [f"{order_id}/{i:07d}" for i in range(100)]
    for r in rows:
        assert r["serial_num"] == manifest[r["device_id"]]["serial_num"]
        index = r["device_id"].rsplit("/", 1)[1]
        assert index in done[r["station_id"]], r
        assert r["mac"].startswith("02:aa:01:") and r["flashed_at"].endswith("Z")
    assert len({r["mac"] for r in rows}) == 100
    assert not await store.exists(f"orders/{order_id}/bindings-failed.csv")
    # One result per device, and an order event counting them.
    results = await records(kafka_settings, STATION_RESULTS, order_id)
    assert sorted(r["index"] for r in results) == list(range(100))
    events = await eventually(
        lambda: _flash_events(kafka_settings, order_id, 100), 60, "flashed=100 event"
    )
    assert events[-1]["failed"] == 0 and not events[-1].get("errors")


async def _flash_events(
    settings: KafkaSettings, order_id: str, total: int
) -> list[dict[str, Any]] | None:
    events = [
        e
        for e in await records(settings, ORDER_EVENTS, order_id)
        if e["status"] == "progress" and (e.get("flashed", 0) + e.get("failed", 0))
    ]
    if events and events[-1].get("flashed", 0) + events[-1].get("failed", 0) == total:
        return events
    return None


async def test_failing_station_ends_with_every_device_accounted_for(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    order_id, line, name = "ST-FLAKY", "line-flaky", "st-flaky"
    out = tmp_path / name
    stations.start(
        name,
        line,
        order_id,
        "--out",
        str(out),
        "--test-mac-prefix",
        "02:aa:02",
        "--fail-rate",
        "0.1",
        "--max-attempts",
        "1",  # every failure re-queues the image: exercises the way back to the line
        "--max-requeues",
        "3",
        "--backoff",
        "0",
    )
    stations.wait_assigned([name])
    submit(stack, tmp_path, work_order(order_id, 100, profile, line=line))

    rows = await complete_bindings(store, order_id, 100)
    failed_rows = await csv_rows(store, f"orders/{order_id}/bindings-failed.csv") or []
    failed_ids = {r["device_id"] for r in failed_rows}
    manifest = await manifest_by_device(store, order_id)
    assert {r["device_id"] for r in rows} == set(manifest)
    for r in rows:
        # flashed (mac and time) or failed for good (neither, and listed with its reason)
        if r["device_id"] in failed_ids:
            assert r["mac"] == "" and r["flashed_at"] == ""
        else:
            assert r["mac"] and r["flashed_at"]
    flashed = [r for r in rows if r["mac"]]
    assert len({r["mac"] for r in flashed}) == len(flashed)
    assert flashed_files(out, order_id) == {r["device_id"].rsplit("/", 1)[1] for r in flashed}
    results = await records(kafka_settings, STATION_RESULTS, order_id)
    retried = [r for r in results if r["status"] == "failed" and not r["final"]]
    assert retried, "a 10% failure rate over 100 devices should have re-queued some"
    finals = {r["device_id"] for r in results if r.get("final", True)}
    assert finals == set(manifest)
    events = await eventually(
        lambda: _flash_events(kafka_settings, order_id, 100), 60, "all devices counted"
    )
    assert events[-1]["flashed"] == len(flashed)


async def test_device_that_never_flashes_is_reported_failed_for_good(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    order_id, name = "ST-DOOMED", "st-doomed"
    out = tmp_path / name
    stations.start(
        name,
        "line-doomed",
        order_id,
        "--out",
        str(out),
        "--fail-rate",
        "1",
        "--max-attempts",
        "2",
        "--max-requeues",
        "1",
        "--backoff",
        "0",
    )
    stations.wait_assigned([name])
    submit(stack, tmp_path, work_order(order_id, 4, profile, line="line-doomed"))

    rows = await complete_bindings(store, order_id, 4)
    assert all(r["mac"] == "" and r["flashed_at"] == "" for r in rows)
    assert {r["station_id"] for r in rows} == {name}
    failed = await csv_rows(store, f"orders/{order_id}/bindings-failed.csv")
    assert failed is not None and len(failed) == 4
    for r in failed:
        assert "injected failure" in r["reason"]
        assert (r["attempts"], r["requeues"]) == ("2", "1")
    assert not flashed_files(out, order_id)
    results = await records(kafka_settings, STATION_RESULTS, order_id)
    assert sorted((r["index"], r["final"]) for r in results) == sorted(
        [(i, False) for i in range(4)] + [(i, True) for i in range(4)]
    )
    events = await eventually(lambda: _flash_events(kafka_settings, order_id, 4), 60, "failed=4")
    assert (events[-1]["flashed"], events[-1]["failed"]) == (0, 4)


async def test_station_killed_mid_flash_loses_no_image(
    stack: LocalStack,
    store: ObjectStore,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    order_id, name = "ST-CRASH", "st-crash"
    out = tmp_path / "board"
    tool = tmp_path / "fake_esptool.py"
    tool.write_text(FAKE_ESPTOOL)
    cmd = f"{sys.executable} {tool} {{partition}} {{device_id}} {out} 0.3"
    options = ("--flash-cmd", cmd, "--timeout", "30")
    pid = stations.start(name, "line-crash", order_id, *options)
    stations.wait_assigned([name])
    submit(stack, tmp_path, work_order(order_id, 12, profile, line="line-crash"))

    def flash_log() -> list[str]:
        path = out / "flash.log"
        return path.read_text().split() if path.exists() else []

    deadline = time.monotonic() + 120
    while len(flash_log()) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # a crash: no clean shutdown, no commit of the image in hand
    await asyncio.sleep(0.5)
    stations.start(name, "line-crash", order_id, *options)

    rows = await complete_bindings(store, order_id, 12)
    manifest = await manifest_by_device(store, order_id)
    assert [r["device_id"] for r in rows] == sorted(manifest)
    assert all(r["mac"] and r["station_id"] == name for r in rows)
    assert len({r["mac"] for r in rows}) == 12
    assert set(flash_log()) == set(manifest)
