"""Helpers for tests that run the real services against the session stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matterfab.objectstore import Store
from matterfab.refs import RefReader
from matterfab.stack import LocalStack
from tests.sealed import open_if_sealed, session_keys

PIPELINE = ("allocator", "signer", "builder", "assembler")


def cli_env(stack: LocalStack, **extra: str) -> dict[str, str]:
    """Environment for a `matterfab` command or service that talks to the test stack."""
    env = dict(os.environ, MATTERFAB_HOME=str(stack.home), MATTERFAB_LOG_LEVEL="INFO")
    env.update(extra)
    return env


def matterfab(
    stack: LocalStack, *args: str, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the `matterfab` CLI against the test stack; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "matterfab.cli.main", *args],
        env=cli_env(stack, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Services:
    """Service processes of the pipeline, started and stopped by PID through the stack."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.names: list[str] = []

    def start(self, service: str, instance: int = 1, **env: str) -> str:
        """Start one instance of a service; its name is `<service>-<instance>`."""
        name = f"{service}-{instance}"
        argv = [sys.executable, "-m", "matterfab.cli.main", "serve", service]
        # Static membership, as `matterfab up` does: a restarted instance rejoins at once.
        env = {f"MATTERFAB_{service.upper()}_INSTANCE_ID": name, **env}
        self.stack.start_service(name, argv, env=env)
        if name not in self.names:
            self.names.append(name)
        return name

    def start_all(
        self, services: Iterable[str] = PIPELINE, *, env: dict[str, str] | None = None
    ) -> None:
        """One instance of each service."""
        for s in services:
            self.start(s, **(env or {}))

    def stop(self, name: str) -> None:
        """Stop one instance (SIGTERM, then SIGKILL after a grace period)."""
        self.stack.stop_service(name)

    def stop_all(self) -> None:
        """Stop every instance this object started."""
        for name in reversed(self.names):
            self.stack.stop_service(name)
        self.names.clear()

    def log(self, name: str) -> str:
        """The service's log so far."""
        path = self.stack.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""


def work_order(order_id: str, quantity: int, profile: str, **overrides: Any) -> dict[str, Any]:
    """A valid work order for the test profile's vendor and product."""
    order: dict[str, Any] = {
        "type": "work-order/v1",
        "order_id": order_id,
        "product": {
            "vendor_id": 0xFFF1,
            "product_id": 0x8000,
            "vendor_name": "matterfab test",
            "product_name": "Test Bulb",
            "hardware_version": 1,
            "hardware_version_string": "v1",
        },
        "quantity": quantity,
        "mfg_date": "2026-11-21",
        "attestation_profile": profile,
        "commissioning": {"iteration_count": 1000, "rotating_device_id": True},
    }
    order.update(overrides)
    return order


def write_order(tmp: Path, order: dict[str, Any]) -> Path:
    """Write a work order to a file for `order submit`."""
    path = tmp / f"{order.get('order_id', 'order')}.json"
    path.write_text(json.dumps(order))
    return path


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def manifest_doc(store: Store, order_id: str) -> dict[str, Any]:
    """An order's manifest.json, parsed."""
    doc: dict[str, Any] = json.loads(await store.get(f"orders/{order_id}/manifest.json"))
    return doc


async def device_objects(store: Store, order_id: str, name: str) -> dict[str, bytes]:
    """Each device's object `name` (a ref name: partition, qrcode, onboarding, dac, ...), by
    its 7-digit index, read through the manifest's refs: a piece of a lot object is cut out of
    it (one GET per lot) and every read is sha256-checked; a sealed object is opened with its
    line's key from the session's stacks (as `order fetch` writes it). Devices without one are
    left out."""
    reader = RefReader(store)
    rows = (await manifest_doc(store, order_id))["devices"]
    keys = session_keys()
    return {
        row["index"]: open_if_sealed(await reader.read(row["objects"][name]), keys)
        for row in rows
        if name in row["objects"]
    }
