"""A line keeps flashing while its stations come and go (issue #27), on the real local stack.

One test per case: a clean stop and a station with another id; a SIGKILL that never comes back
(with another station running, or with a new one started); a station added mid-order; two
stations on the same order; a restart under the station's own id. Each flashes a small order
through a stand-in for esptool (a pause per device, so the change happens mid-order) and checks
that every device of the manifest is bound once in bindings.csv with distinct MACs, that the
bytes on the "board" are the manifest's, that another station took over a departed one's images
within the stated bound (presence.TAKEOVER_BOUND_S), and that the line's lag drains to 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.s3 import ObjectStore
from matterfab.services.monitor.app import Monitor
from matterfab.services.station.presence import TAKEOVER_BOUND_S
from matterfab.stack import LocalStack
from tests.e2e.test_stations import (
    Stations,
    complete_bindings,
    eventually,
    manifest_by_device,
    submit,
)
from tests.pipeline import Services, matterfab, work_order

pytestmark = pytest.mark.timeout(600)

DEVICES = 10
FLASH_S = 0.8  # the stand-in's pause per device: an order takes ~8 s on one station

# The stand-in for esptool: "flashes" by copying the partition into the board folder after a
# pause (longer while the test holds the board), logs which station process ran it (its
# parent's PID: a SIGKILLed station's flash in hand may still finish, as a real esptool
# would), and prints a MAC the way esptool does.
FAKE_ESPTOOL = """
import hashlib, os, pathlib, shutil, sys, time
partition, device_id, out = sys.argv[1:4]
station = os.getppid()  # now: once its station is killed, its parent is another process
while os.path.exists(os.path.join(out, "hold")):  # a test holding the board
    time.sleep(0.05)
time.sleep(float(sys.argv[4]))
dest = pathlib.Path(out) / device_id
dest.mkdir(parents=True, exist_ok=True)
shutil.copy(partition, dest / "partition.bin")
with open(pathlib.Path(out) / "flash.log", "a") as log:
    log.write(f"{station} {device_id}\\n")
mac = hashlib.sha256(device_id.encode()).digest()[:6]
print("MAC: " + ":".join(f"{b:02X}" for b in mac))
"""


@pytest.fixture
def stations(stack: LocalStack, pipeline: Services) -> Iterator[Stations]:
    group = Stations(stack)
    try:
        yield group
    finally:
        group.stop_all()


class Line:
    """One test line: its order, its stations' shared "board" folder and the checks."""

    def __init__(self, stack: LocalStack, stations: Stations, tmp_path: Path, line: str):
        self.stack = stack
        self.stations = stations
        self.tmp_path = tmp_path
        self.line = line
        self.order_id = line.upper()
        self.out = tmp_path / "board"
        tool = tmp_path / "fake_esptool.py"
        tool.write_text(FAKE_ESPTOOL)
        self.cmd = f"{sys.executable} {tool} {{partition}} {{device_id}} {self.out} {FLASH_S}"
        self.submitted: asyncio.Future[None] | None = None

    @property
    def group(self) -> str:
        return f"matterfab-station-{self.line}"

    def start(self, name: str) -> int:
        options = ("--flash-cmd", self.cmd, "--timeout", "30")
        return self.stations.start(name, self.line, self.order_id, *options)

    def submit(self) -> None:
        """Submit the order in the background (the pipeline makes its images meanwhile)."""
        order = work_order(self.order_id, DEVICES, "e2e-fff1", line=self.line)
        self.submitted = asyncio.ensure_future(
            asyncio.to_thread(submit, self.stack, self.tmp_path, order)
        )

    def flashes(self) -> list[tuple[int, str]]:
        """(station PID, device id) of every flash so far, in order."""
        path = self.out / "flash.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(pid), device) for pid, device in (ln.split() for ln in lines)]

    def flash_log(self) -> list[str]:
        return [device for _, device in self.flashes()]

    async def wait_flashed(self, count: int, timeout: float = 180) -> None:
        await eventually(
            lambda: _now(len(self.flash_log()) >= count), timeout, f"{count} flashes on {self.line}"
        )

    async def takeover_s(self, since: float, departed: int) -> float:
        """Seconds from `since` until a station process other than `departed` flashes a
        device that was not flashed yet (the line moves again)."""
        done = set(self.flash_log())

        async def moved() -> bool:
            return any(pid != departed and d not in done for pid, d in self.flashes())

        await eventually(moved, TAKEOVER_BOUND_S + 30, "a takeover")
        return time.monotonic() - since

    async def check(
        self, store: ObjectStore, settings: KafkaSettings, workers: set[str]
    ) -> list[dict[str, str]]:
        """Every device bound once, distinct MACs, the manifest's bytes, lag drained to 0."""
        assert self.submitted is not None
        await self.submitted
        rows = await complete_bindings(store, self.order_id, DEVICES)
        manifest = await manifest_by_device(store, self.order_id)
        assert sorted(r["device_id"] for r in rows) == sorted(manifest)  # each device once
        assert all(r["mac"] and r["flashed_at"] for r in rows)
        assert len({r["mac"] for r in rows}) == DEVICES
        assert {r["station_id"] for r in rows} <= workers
        assert not await store.exists(f"orders/{self.order_id}/bindings-failed.csv")
        # Flashed at least once each (a re-flash of the device in the fixture at a crash is
        # allowed), and what is on the board is the manifest's image, byte for byte.
        assert set(self.flash_log()) == set(manifest)
        for device_id, row in manifest.items():
            data = (self.out / device_id / "partition.bin").read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["partition_sha256"], device_id
        started = time.monotonic()
        await eventually(lambda: self._drained(settings), TAKEOVER_BOUND_S, f"{self.group} lag 0")
        print(f"{self.line}: lag 0 {time.monotonic() - started:.1f}s after the last binding")
        return rows

    async def _drained(self, settings: KafkaSettings) -> bool:
        rows = await kafka.group_lag(settings, self.group)
        return bool(rows) and sum(r.lag for r in rows) == 0


async def _now(value: Any) -> Any:
    return value


async def _kill(pid: int) -> float:
    """SIGKILL a station mid-flash (its stand-in esptool running, past reading its parent)."""
    await asyncio.sleep(FLASH_S / 2)
    os.kill(pid, signal.SIGKILL)  # a crash: no leave, no commit of the image in hand
    return time.monotonic()


async def test_clean_stop_then_a_station_with_another_id(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-swap")
    pid = line.start("swap-a")
    stations.wait_assigned(["swap-a"])
    line.submit()
    await line.wait_flashed(4)
    stack.stop_service("swap-a")  # SIGTERM: finishes the image in hand, leaves the group
    stopped = time.monotonic()
    line.start("swap-b")
    took = await line.takeover_s(stopped, pid)
    print(f"clean stop + new id: swap-b flashed {took:.1f}s after swap-a stopped")
    assert took <= TAKEOVER_BOUND_S
    rows = await line.check(store, kafka_settings, {"swap-a", "swap-b"})
    assert {r["station_id"] for r in rows} == {"swap-a", "swap-b"}
    # Ops see it: the monitor lists both stations, `matterfab lag` the group's one member.
    seen = await monitor_rows(kafka_settings, store, line.line)
    assert (seen["swap-a"]["status"], seen["swap-a"]["in_group"]) == ("stopped", False)
    assert (seen["swap-b"]["status"], seen["swap-b"]["in_group"]) == ("live", True)
    a_did = {r["device_id"] for r in rows if r["station_id"] == "swap-a"}
    assert seen["swap-a"]["flashed_recent"] == len(a_did) >= 4
    assert {r["device_id"] for r in seen["swap-a"]["recent"]} == a_did
    done = await asyncio.to_thread(matterfab, stack, "lag", "--group", line.group, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["groups"][0]
    assert doc["state"] == "Stable" and doc["lag"] == 0
    assert [m["instance_id"] for m in doc["members"]] == ["station-swap-b"]


async def test_crashed_station_never_back_while_another_runs(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-kill")
    pid = line.start("kill-a")
    line.start("kill-b")
    stations.wait_assigned(["kill-a", "kill-b"])
    line.submit()
    await line.wait_flashed(3)
    killed = await _kill(pid)
    # kill-b keeps its own share; kill-a's images come back to it once kill-a is removed.
    await eventually(
        lambda: _now(any("station kill-a departed" in ln for ln in _sweeps(stations, "kill-b"))),
        TAKEOVER_BOUND_S,
        "kill-b removing kill-a from the group",
    )
    removed = time.monotonic() - killed
    print(f"SIGKILL, other running: kill-a removed from the group {removed:.1f}s after the kill")
    assert removed <= TAKEOVER_BOUND_S
    rows = await line.check(store, kafka_settings, {"kill-a", "kill-b"})
    assert "kill-b" in {r["station_id"] for r in rows}


async def test_crashed_station_never_back_and_a_new_one_starts(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-spare")
    pid = line.start("spare-a")
    stations.wait_assigned(["spare-a"])
    line.submit()
    await line.wait_flashed(3)
    killed = await _kill(pid)
    line.start("spare-b")  # the spare, under another name
    took = await line.takeover_s(killed, pid)
    print(f"SIGKILL, spare started: spare-b flashed {took:.1f}s after the kill")
    assert took <= TAKEOVER_BOUND_S
    rows = await line.check(store, kafka_settings, {"spare-a", "spare-b"})
    assert "spare-b" in {r["station_id"] for r in rows}
    seen = await monitor_rows(kafka_settings, store, line.line)
    assert (seen["spare-a"]["status"], seen["spare-a"]["in_group"]) == ("departed", False)
    assert (seen["spare-b"]["status"], seen["spare-b"]["in_group"]) == ("live", True)


async def test_station_added_while_another_runs(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-add")
    line.start("add-a")
    stations.wait_assigned(["add-a"])
    line.submit()
    await line.wait_flashed(2)
    (line.out / "hold").touch()  # add-a's next flash takes until add-b has joined
    line.start("add-b")
    stations.wait_assigned(["add-a", "add-b"])
    (line.out / "hold").unlink()
    rows = await line.check(store, kafka_settings, {"add-a", "add-b"})
    assert {r["station_id"] for r in rows} == {"add-a", "add-b"}, "add-b got no share"


async def test_two_stations_on_the_same_order(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-pair")
    line.start("pair-a")
    line.start("pair-b")
    stations.wait_assigned(["pair-a", "pair-b"])
    line.submit()
    rows = await line.check(store, kafka_settings, {"pair-a", "pair-b"})
    assert {r["station_id"] for r in rows} == {"pair-a", "pair-b"}
    assert sorted(line.flash_log()) == sorted(r["device_id"] for r in rows)  # none twice


async def test_station_restarted_under_its_own_id(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    tmp_path: Path,
) -> None:
    line = Line(stack, stations, tmp_path, "churn-same")
    pid = line.start("same-a")
    stations.wait_assigned(["same-a"])
    line.submit()
    await line.wait_flashed(3)
    killed = await _kill(pid)
    await asyncio.sleep(0.5)
    line.start("same-a")
    took = await line.takeover_s(killed, pid)
    print(f"SIGKILL + restart under its own id: flashing again {took:.1f}s after the kill")
    assert took <= TAKEOVER_BOUND_S
    rows = await line.check(store, kafka_settings, {"same-a"})
    assert {r["station_id"] for r in rows} == {"same-a"}


async def monitor_rows(
    settings: KafkaSettings, store: ObjectStore, line: str
) -> dict[str, dict[str, Any]]:
    """The monitor's station rows of `line` (its own code, on the real broker and bucket)."""
    monitor = Monitor(settings, store=store)
    try:
        assert await monitor.refresh_lag() is None
        await monitor.refresh_stations()
        status = monitor.status()
    finally:
        await monitor.stop()
    assert status["stations_error"] is None
    return {r["station_id"]: r for r in status["stations"] if r["line"] == line}


def _sweeps(stations: Stations, name: str) -> list[str]:
    return [ln["msg"] for ln in stations.log_lines(name) if "departed" in ln["msg"]]
