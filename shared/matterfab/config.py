"""Where matterfab finds its Kafka, its S3 store and its key-encryption key.

Environment variables (`MATTERFAB_…`) always win, so the same code runs against the production
stack (docker-compose, Kubernetes) or any other Kafka and S3. Without them, every command finds
the local stack that `matterfab up` started through the state files it wrote under
`state_dir()`: `stack.json` (endpoints and credentials, present while the stack runs) and
`kek.b64` (the key-encryption key, kept across restarts because wrapped keys outlive a run).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab.errors import StackError

HOME_ENV = "MATTERFAB_HOME"
STATE_DIR_NAME = ".matterfab"
STACK_FILE = "stack.json"
KEK_FILE = "kek.b64"
KEK_ENV = "MATTERFAB_KEK"
KEK_FILE_ENV = "MATTERFAB_KEK_FILE"  # a file holding the base64 key (Docker/Kubernetes secrets)
KEK_SIZE = 32  # AES-256 key-encryption key (DESIGN §4: AES-256-GCM wrapping)


def state_dir() -> Path:
    """The local state folder: $MATTERFAB_HOME, else the nearest `.matterfab` up from cwd."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        candidate = folder / STATE_DIR_NAME
        if candidate.is_dir():
            return candidate
    return cwd / STATE_DIR_NAME


class KafkaSettings(BaseSettings):
    """How to reach Kafka (env `MATTERFAB_KAFKA_BOOTSTRAP`, `MATTERFAB_KAFKA_CLIENT_ID`, …)."""

    model_config = SettingsConfigDict(env_prefix="MATTERFAB_KAFKA_", extra="ignore")

    bootstrap: str
    client_id: str = "matterfab"
    request_timeout_ms: int = 30000


class S3Settings(BaseSettings):
    """How to reach the object store (env `MATTERFAB_S3_ENDPOINT`, `_ACCESS_KEY`, …)."""

    model_config = SettingsConfigDict(env_prefix="MATTERFAB_S3_", extra="ignore")

    endpoint: str
    access_key: str
    secret_key: SecretStr
    bucket: str = "matterfab"
    region: str = "us-east-1"
    # Connections kept open per client: services issue thousands of small PUTs a minute.
    max_pool_connections: int = 50
    # How long one call keeps retrying a store that is down (connection refused, 5xx) before
    # it gives up: long enough to ride out a restart of the store, bounded so nothing hangs.
    retry_deadline_s: float = 60.0
    retry_initial_backoff_s: float = 0.1
    retry_max_backoff_s: float = 2.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0


class LocalStackSettings(BaseSettings):
    """Ports of the local stack (env `MATTERFAB_KAFKA_PORT`, `MATTERFAB_S3_PORT`, …).

    Only the two client-facing ports have fixed defaults (what `make up` prints); the object
    store's internal HTTP ports (master, volume, filer, admin) are picked free at first start
    unless set, then remembered in the stack's state. Each gRPC port is its HTTP port + 10000.
    """

    model_config = SettingsConfigDict(env_prefix="MATTERFAB_", extra="ignore")

    kafka_port: int = 19092
    s3_port: int = 18333
    s3_master_port: int | None = None
    s3_volume_port: int | None = None
    s3_filer_port: int | None = None
    s3_admin_port: int | None = None


def read_stack_state(home: Path | None = None) -> dict[str, Any] | None:
    """The running local stack's `stack.json` as a dict, or None when no stack is up."""
    path = (home or state_dir()) / STACK_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read local stack state {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StackError(f"local stack state {path} is not a JSON object")
    return data


def _missing(what: str, env: str) -> StackError:
    return StackError(
        f"no {what} configured: set {env}, or start the local stack with `matterfab up` "
        f"(no running stack found at {state_dir() / STACK_FILE})"
    )


def load_kafka_settings() -> KafkaSettings:
    """Kafka settings from the environment, else from the running local stack."""
    if os.environ.get("MATTERFAB_KAFKA_BOOTSTRAP"):
        return KafkaSettings()
    state = read_stack_state()
    if state is None or "bootstrap" not in state:
        raise _missing("Kafka", "MATTERFAB_KAFKA_BOOTSTRAP")
    return KafkaSettings(bootstrap=state["bootstrap"])


def load_s3_settings() -> S3Settings:
    """S3 settings from the environment, else from the running local stack."""
    if os.environ.get("MATTERFAB_S3_ENDPOINT"):
        absent = [
            name
            for name in ("MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY")
            if not os.environ.get(name)
        ]
        if absent:
            # An endpoint without credentials would be an open store or a confusing 403 later.
            raise StackError(f"MATTERFAB_S3_ENDPOINT is set but {', '.join(absent)} is not")
        return S3Settings()
    state = read_stack_state()
    if state is None or "s3_endpoint" not in state:
        raise _missing("S3 store", "MATTERFAB_S3_ENDPOINT")
    kwargs: dict[str, Any] = {
        "endpoint": state["s3_endpoint"],
        "access_key": state["s3_access_key"],
        "secret_key": SecretStr(state["s3_secret_key"]),
    }
    if not os.environ.get("MATTERFAB_S3_BUCKET") and "s3_bucket" in state:
        kwargs["bucket"] = state["s3_bucket"]
    return S3Settings(**kwargs)


def decode_kek(text: str, source: str) -> bytes:
    """Decode a base64 key-encryption key and check it is exactly 32 bytes."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StackError(f"{source}: key-encryption key must be base64 ({exc})") from exc
    if len(key) != KEK_SIZE:
        raise StackError(f"{source}: key-encryption key must be {KEK_SIZE} bytes, got {len(key)}")
    return key


def load_kek() -> bytes:
    """The 32-byte key-encryption key.

    From env MATTERFAB_KEK (base64), else the file named by MATTERFAB_KEK_FILE (a mounted
    secret), else the local stack's `<state_dir>/kek.b64`; StackError if there is none.
    """
    env = os.environ.get(KEK_ENV)
    if env:
        return decode_kek(env, KEK_ENV)
    named = os.environ.get(KEK_FILE_ENV)
    path = Path(named) if named else state_dir() / KEK_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise StackError(f"{KEK_FILE_ENV} names {path}, which does not exist") from None
        raise StackError(
            f"no key-encryption key: set {KEK_ENV} (base64 of 32 bytes) or {KEK_FILE_ENV}, "
            f"or run `matterfab up` to create {path}"
        ) from None
    return decode_kek(text, str(path))
