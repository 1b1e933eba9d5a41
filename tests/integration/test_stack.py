"""LocalStack lifecycle: start/stop by PID, idempotent start, services, persistence, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from matterfab import config
from matterfab.errors import StackError
from matterfab.localstack import LocalStack, StackPorts, binaries
from matterfab.localstack import stack as stack_module
from matterfab.s3 import ObjectStore
from matterfab.topics import ALL_TOPICS, apply_topics, load_topics

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
GRACEFUL = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "def bye(*_):\n"
    "    time.sleep(0.5); print('clean exit', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "time.sleep(120)",
]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
]


def gone(pid: int) -> bool:
    """True if the process no longer runs (absent, or a zombie awaiting its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_start_twice_then_stop_leaves_nothing(tmp_path: Path, stack: LocalStack) -> None:
    """Runs beside the session stack (two stacks side by side), so it also checks isolation."""
    local = LocalStack(tmp_path / "home", ports=StackPorts.free())
    began = time.monotonic()
    local.start()
    print(f"\nstack start: {time.monotonic() - began:.2f}s")
    status = local.status()
    kafka_pid, s3_pid = status["kafka"]["pid"], status["s3"]["pid"]
    assert kafka_pid and s3_pid
    assert kafka_pid != stack.status()["kafka"]["pid"]

    again = LocalStack(tmp_path / "home")  # a second `up`: another process, same folder
    again.start()
    assert again.status()["kafka"]["pid"] == kafka_pid
    assert again.status()["s3"]["pid"] == s3_pid
    assert again.ports == local.ports
    # The store runs one Go scheduler thread (servers.WEED_ENV) unless the environment says.
    environ = Path(f"/proc/{s3_pid}/environ").read_bytes().split(b"\0")
    expected = os.environ.get("GOMAXPROCS", "1")
    assert f"GOMAXPROCS={expected}".encode() in environ

    service_pid = local.start_service("sleeper", SLEEPER)
    assert local.start_service("sleeper", SLEEPER) == service_pid
    graceful = [local.start_service(f"graceful{i}", GRACEFUL) for i in range(3)]
    assert local.running_services() == {
        "sleeper": service_pid,
        **{f"graceful{i}": pid for i, pid in enumerate(graceful)},
    }
    time.sleep(0.5)  # let them install their SIGTERM handlers
    assert (tmp_path / "home" / "logs" / "sleeper.log").exists()

    state_file = tmp_path / "home" / "stack.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert state["bootstrap"] == local.kafka_settings().bootstrap

    began = time.monotonic()
    local.stop()
    print(f"stack stop: {time.monotonic() - began:.2f}s")
    for pid in (kafka_pid, s3_pid, service_pid, *graceful):
        assert gone(pid), f"pid {pid} still running"
    for i in range(3):  # each was given the time to finish its work
        assert "clean exit" in local.log_path(f"graceful{i}").read_text()
    assert list((tmp_path / "home" / "pids").glob("*.pid")) == []
    assert not state_file.exists()
    local.stop()  # stopping a stopped stack is harmless
    # The session stack is untouched.
    assert stack.is_running()


def test_restart_keeps_topics_objects_and_kek(tmp_path: Path) -> None:
    local = LocalStack(tmp_path / "home", ports=StackPorts.free())
    local.start()
    try:
        kek = (tmp_path / "home" / "kek.b64").read_text()
        assert len(base64.b64decode(kek)) == 32
        assert stat.S_IMODE((tmp_path / "home" / "kek.b64").stat().st_mode) == 0o600

        async def write() -> None:
            async with ObjectStore.open(local.s3_settings()) as store:
                await store.put_once("orders/x/order.json", b"{}")

        asyncio.run(write())
        local.stop()
        local.start()

        async def check() -> None:
            async with ObjectStore.open(local.s3_settings()) as store:
                assert await store.get("orders/x/order.json") == b"{}"
            report = await apply_topics(local.kafka_settings(), load_topics())
            assert report.created == [] and sorted(report.existing) == sorted(ALL_TOPICS)

        asyncio.run(check())
        assert (tmp_path / "home" / "kek.b64").read_text() == kek
    finally:
        local.stop()


def test_stop_kills_a_service_that_ignores_sigterm(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_module, "SERVICE_STOP_TIMEOUT_S", 0.5)
    pid = stack.start_service("stubborn", STUBBORN)
    time.sleep(0.3)  # let it install its SIGTERM handler
    began = time.monotonic()
    assert stack.stop_service("stubborn")
    assert gone(pid)
    assert time.monotonic() - began < 5
    assert "stubborn" not in stack.running_services()
    assert not stack.stop_service("stubborn")


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    ports = StackPorts.free()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.kafka))
        squatter.listen()
        local = LocalStack(tmp_path / "home", ports=ports)
        with pytest.raises(StackError, match=f"port {ports.kafka} is already in use"):
            local.start()
    assert local.status()["kafka"]["pid"] is None and local.status()["s3"]["pid"] is None


def test_failing_server_reports_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fake weed: cannot open data dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(binaries, "weed_binary", lambda: fake)
    local = LocalStack(tmp_path / "home", ports=StackPorts.free())
    with pytest.raises(StackError, match="cannot open data dir"):
        local.start()
    # The broker this failed start launched was stopped again.
    assert local.status()["kafka"]["pid"] is None
    assert list((tmp_path / "home" / "pids").glob("*.pid")) == []


def test_settings_are_found_through_the_state_folder(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("MATTERFAB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MATTERFAB_HOME", str(stack.home))
    assert config.load_kafka_settings().bootstrap == stack.kafka_settings().bootstrap
    s3 = config.load_s3_settings()
    assert s3.endpoint == stack.s3_settings().endpoint
    assert s3.secret_key == stack.s3_settings().secret_key
    assert len(config.load_kek()) == 32
