"""A station and the monitor ride out the broker and the S3 store going away, by themselves.

Both run as real processes (`matterfab station run`, `matterfab serve monitor`) on this
package's stack. While a dependency is down each answers /healthz with 503 naming it, logs
one line per failed attempt (attempt numbers never repeat; no aiokafka socket chatter) and
one line when it is back; then, untouched, it works again: the station flashes an image
announced during or after the outage, the monitor shows an order event sent after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from matterfab.config import KafkaSettings
from matterfab.messages import IMAGES_READY, ORDER_EVENTS, ImageReady, OrderEvent, encode
from matterfab.s3 import ObjectStore
from matterfab.stack import KAFKA, S3, LocalStack, free_ports
from tests.reliability.harness import send, wait_until
from tests.sealed import ensure_line

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
LINE = "outage-line"
ORDER = "OUTAGE-ST"
PARTITION = bytes(range(256)) * 96  # 24 KiB, a partition's size


@dataclass(eq=False)
class Proc:
    """A process of ours: its PID, log file and /healthz URL."""

    proc: subprocess.Popen[bytes]
    log: Path
    health: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines_since(self, mark: int) -> list[str]:
        return self.text()[mark:].splitlines()


def spawn(argv: list[str], env: dict[str, str], log: Path, health: str) -> Proc:
    handle = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matterfab.cli.main", *argv],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Proc(proc, log, health)


def health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (OSError, ValueError):
        return 0, {}


async def healthy(p: Proc, ready: bool, down: str | None = None, timeout: float = 30) -> None:
    async def check() -> bool:
        code, body = await asyncio.to_thread(health, p.health)
        if ready:
            return code == 200
        return code == 503 and (down is None or down in body.get("down", {}))

    state = "ready" if ready else f"not ready ({down} down)"
    await wait_until(check, timeout, f"{p.health} to say {state}", interval=0.3)


def stop_infra(stack: LocalStack, name: str) -> None:
    """A real, clean stop of the broker or the store (SIGTERM by the PID the stack recorded)."""
    pid = stack._live_pid(name)
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while stack._live_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack._live_pid(name) is None


def attempt_lines(lines: list[str], where: str) -> list[int]:
    found = []
    for line in lines:
        msg = json.loads(line).get("msg", "") if line.startswith("{") else line
        m = re.match(rf"{re.escape(where)}: attempt (\d+) failed", msg)
        if m:
            found.append(int(m.group(1)))
    return found


@pytest.fixture(scope="module")
def procs(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A station of line LINE (images to a folder) and a monitor, both on the package stack."""
    work = tmp_path_factory.mktemp("outages")
    s3 = stack.s3_settings()
    # The station's line must be registered, its key where the station finds it (issue #20).
    ensure_line(stack, LINE)
    station_port, monitor_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERFAB_")}
    env.update(
        MATTERFAB_HOME=str(stack.home),
        MATTERFAB_KAFKA_BOOTSTRAP=stack.kafka_settings().bootstrap,
        MATTERFAB_KAFKA_EMBEDDED="1",
        MATTERFAB_S3_ENDPOINT=s3.endpoint,
        MATTERFAB_S3_ACCESS_KEY=s3.access_key,
        MATTERFAB_S3_SECRET_KEY=s3.secret_key.get_secret_value(),
        MATTERFAB_S3_BUCKET=s3.bucket,
        MATTERFAB_STATION_METRICS_PORT=str(station_port),
        MATTERFAB_MONITOR_PORT=str(monitor_port),
        MATTERFAB_MONITOR_REFRESH_S="1",
        PYTHONPATH=str(ROOT),
    )
    out = work / "images"
    started = {
        "station": spawn(
            ["station", "run", "--station-id", "outage-1", "--line", LINE, "--out", str(out)],
            env,
            work / "station.log",
            f"http://127.0.0.1:{station_port}/healthz",
        ),
        "monitor": spawn(
            ["serve", "monitor"],
            env,
            work / "monitor.log",
            f"http://127.0.0.1:{monitor_port}/healthz",
        ),
    }
    try:
        yield {"out": out, "monitor_port": monitor_port, **started}
    finally:
        for p in started.values():
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGTERM)  # our own children, by PID
        for p in started.values():
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()
        if not stack.is_running():
            stack.start()


@pytest_asyncio.fixture(loop_scope="session")
async def started(procs: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for name in ("station", "monitor"):
        await healthy(procs[name], ready=True)
    yield procs


async def store_image(store: ObjectStore, index: int) -> None:
    """Put a device's partition in the bucket."""
    await store.put_once(f"orders/{ORDER}/devices/{index:07d}/partition.bin", PARTITION)


async def announce(settings: KafkaSettings, index: int) -> Path:
    """Announce a stored image on mfg.images.ready; where the station will put it."""
    key = f"orders/{ORDER}/devices/{index:07d}/partition.bin"
    ref = {"key": key, "sha256": hashlib.sha256(PARTITION).hexdigest(), "size": len(PARTITION)}
    other = {"key": f"orders/{ORDER}/devices/{index:07d}/x", "sha256": "0" * 64, "size": 1}
    msg = ImageReady.model_validate(
        {
            "order_id": ORDER,
            "device_id": f"{ORDER}/{index:07d}",
            "index": index,
            "quantity": 10,
            "vendor_id": 0xFFF1,
            "product_id": 0x8000,
            "serial_num": f"OUT{index}",
            "discriminator": 1,
            "qr_payload": "MT:Y.K9042C00KA0648G00",
            "manual_code": "34970112332",
            "dac_serial": "01",
            "objects": {"partition": ref, "qrcode": other, "onboarding": other, "dac": other},
        }
    )
    await send(settings, IMAGES_READY, encode(msg), msg.device_id)
    return Path(f"{ORDER}/{index:07d}/partition.bin")


async def flashed(out: Path, rel: Path, timeout: float) -> None:
    async def there() -> bool:
        path = out / rel
        return path.exists() and path.read_bytes() == PARTITION

    await wait_until(there, timeout, f"the station to flash {rel}", interval=0.5)


async def test_broker_down_station_and_monitor_wait_and_recover(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    started: dict[str, Any],
) -> None:
    station, monitor = started["station"], started["monitor"]
    await store_image(store, 0)
    await flashed(started["out"], await announce(kafka_settings, 0), 60)
    marks = {p: len(p.text()) for p in (station, monitor)}
    where = f"Kafka at {kafka_settings.bootstrap}"
    began = time.monotonic()
    await asyncio.to_thread(stop_infra, stack, KAFKA)
    try:
        await healthy(monitor, ready=False, down="kafka", timeout=20)
        await healthy(station, ready=False, down="kafka", timeout=20)
        await asyncio.sleep(4)  # a few attempts' worth of backoff
    finally:
        await asyncio.to_thread(stack.start)  # restarts only what is down
    outage = time.monotonic() - began
    await healthy(station, ready=True, timeout=40)
    await healthy(monitor, ready=True, timeout=40)
    for p in (station, monitor):
        lines = p.lines_since(marks[p])
        assert not [x for x in lines if "Unable connect to" in x], "aiokafka chatter logged"
        attempts = attempt_lines(lines, where) + attempt_lines(lines, f"{where} (lag)")
        assert attempts, f"{p.log.name}: no attempt line during the outage"
        # One line per attempt, backing off: far fewer than the ~10 a second of before.
        assert len(lines) <= 6 * outage, (len(lines), outage, lines[-10:])
        assert any("back after" in x for x in lines), lines[-10:]
    # Untouched, the station works again: an image announced now is flashed.
    await store_image(store, 1)
    await flashed(started["out"], await announce(kafka_settings, 1), 60)
    # ... and the monitor follows order events again.
    event = OrderEvent(order_id="OUTAGE-MON", status="progress", ready=1, quantity=2)
    await send(kafka_settings, ORDER_EVENTS, encode(event), event.order_id)
    url = f"http://127.0.0.1:{started['monitor_port']}/api/status"

    async def shown() -> bool:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
        return b"OUTAGE-MON" in text

    await wait_until(shown, 30, "the monitor to show an event sent after the outage")


async def test_s3_down_station_waits_and_flashes_after(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    started: dict[str, Any],
) -> None:
    station, monitor = started["station"], started["monitor"]
    for index in (2, 3):
        await store_image(store, index)
    await flashed(started["out"], await announce(kafka_settings, 2), 60)
    mark = len(station.text())
    await asyncio.to_thread(stop_infra, stack, S3)
    try:
        await healthy(station, ready=False, down="s3", timeout=20)
        code, _ = await asyncio.to_thread(health, monitor.health)
        assert code == 200  # the monitor does not use the store
        # An image announced during the outage waits for the store, unflashed.
        during = await announce(kafka_settings, 3)
        await asyncio.sleep(4)
        assert not (started["out"] / during).exists()
    finally:
        await asyncio.to_thread(stack.start)
    await flashed(started["out"], during, 60)  # by itself, once the store is back
    await healthy(station, ready=True, timeout=40)
    lines = station.lines_since(mark)
    attempts = attempt_lines(lines, store.where())
    assert attempts and attempts == sorted(set(attempts)), attempts
    assert any("back after" in x for x in lines), lines[-10:]
