"""The local stack's state folder: its lock, remembered ports and credentials, KEK, stack.json.

home/stack.json          endpoints and credentials while the stack runs (mode 0600)
home/kek.b64             the key-encryption key (mode 0600, kept across restarts)
home/s3-credentials.json the store's access key and secret (mode 0600, kept)
home/ports.json          the ports chosen at first start (kept, so restarts reuse them)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import secrets
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matterfab.config import KEK_FILE, KEK_SIZE, STACK_FILE, LocalStackSettings
from matterfab.localstack.ports import StackPorts
from matterfab.localstack.processes import write_private

PORTS_FILE = "ports.json"
CREDENTIALS_FILE = "s3-credentials.json"


class StateFolder:
    """The files of one local stack under `home` (the processes' own are the Supervisor's)."""

    def __init__(self, home: Path):
        """The state folder `home` (created on first write)."""
        self.home = home

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize start/stop of this stack across processes (two `up` at once are safe)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "stack.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remembered_ports(self, settings: LocalStackSettings | None = None) -> StackPorts | None:
        """The ports of a previous start; Kafka's and S3's follow the settings when they set
        them (env `MATTERFAB_KAFKA_PORT`, `MATTERFAB_S3_PORT`), internal ones persist."""
        try:
            data = json.loads((self.home / PORTS_FILE).read_text())
            ports = StackPorts(**data)
        except (OSError, ValueError, TypeError):
            return None
        return ports.follow(settings or LocalStackSettings())

    def remember_ports(self, ports: StackPorts) -> None:
        """Keep the ports for the next start."""
        write_private(self.home / PORTS_FILE, json.dumps(asdict(ports)))

    def credentials(self, access_key: str | None, secret_key: str | None) -> tuple[str, str]:
        """The store's access key and secret: given, else kept from a previous start, else new."""
        if access_key and secret_key:
            return access_key, secret_key
        path = self.home / CREDENTIALS_FILE
        try:
            data = json.loads(path.read_text())
            return str(data["access_key"]), str(data["secret_key"])
        except (OSError, ValueError, KeyError):
            pass
        access = access_key or f"mf{secrets.token_hex(8)}"
        secret = secret_key or secrets.token_urlsafe(30)
        write_private(path, json.dumps({"access_key": access, "secret_key": secret}))
        return access, secret

    def ensure_kek(self) -> None:
        """Create the key-encryption key once; it outlives every run (wrapped keys do)."""
        path = self.home / KEK_FILE
        if not path.exists():
            write_private(path, base64.b64encode(secrets.token_bytes(KEK_SIZE)).decode() + "\n")

    def write_stack(self, state: dict[str, Any]) -> None:
        """Write `stack.json`: what every command reads to find this running stack."""
        write_private(self.home / STACK_FILE, json.dumps(state, indent=2) + "\n")

    def remove_stack(self) -> None:
        """Remove `stack.json`: the stack no longer runs."""
        (self.home / STACK_FILE).unlink(missing_ok=True)
