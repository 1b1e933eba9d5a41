"""The local stack's small parts, without starting anything: remembered ports, child env, state."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from matterfab.config import LocalStackSettings
from matterfab.localstack import LocalStack, StackPorts, StateFolder
from matterfab.localstack.processes import Supervisor, child_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MATTERFAB_"):
            monkeypatch.delenv(name)


def test_remembered_ports_follow_only_explicit_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = StateFolder(tmp_path)
    assert folder.remembered_ports() is None
    ports = StackPorts.with_offsets(11001, 11002, 11003, 11004, 11005, 11006)
    folder.remember_ports(ports)
    assert stat.S_IMODE((tmp_path / "ports.json").stat().st_mode) == 0o600
    # Unset: the remembered ports, not the settings' defaults (19092 / 18333).
    assert folder.remembered_ports() == ports
    monkeypatch.setenv("MATTERFAB_KAFKA_PORT", "12001")
    again = folder.remembered_ports()
    assert again is not None and (again.kafka, again.s3, again.master) == (12001, 11002, 11003)
    assert again.follow(LocalStackSettings(s3_port=12002)).s3 == 12002


def test_credentials_are_made_once_and_kept(tmp_path: Path) -> None:
    folder = StateFolder(tmp_path)
    first = folder.credentials(None, None)
    assert folder.credentials(None, None) == first
    assert folder.credentials("given", "secret") == ("given", "secret")
    saved = json.loads((tmp_path / "s3-credentials.json").read_text())
    assert (saved["access_key"], saved["secret_key"]) == first


def test_child_env_defaults_yield_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_SIGNER_METRICS_PORT", "19999")
    env = child_env(
        {"MATTERFAB_SIGNER_METRICS_PORT": "9402", "MATTERFAB_MONITOR_PORT": "9400"},
        MATTERFAB_HOME="/x",
    )
    assert env["MATTERFAB_SIGNER_METRICS_PORT"] == "19999"  # already set: it wins
    assert env["MATTERFAB_MONITOR_PORT"] == "9400"  # unset: the default
    assert env["MATTERFAB_HOME"] == "/x" and env["PATH"] == os.environ["PATH"]


def test_a_stack_that_never_started(tmp_path: Path) -> None:
    local = LocalStack(tmp_path / "home", ports=StackPorts.free())
    status = local.status()
    assert status["kafka"]["pid"] is None and status["s3"]["pid"] is None
    assert status["services"] == {} and not local.is_running()
    assert local.kafka_settings().embedded
    assert Supervisor(local.home).recorded() == []
    assert not local.stop_service("nothing")
