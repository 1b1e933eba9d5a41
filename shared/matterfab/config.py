"""Every setting matterfab reads from its environment, and where it finds Kafka, S3 and the KEK.

This is where the environment is read (issue #23): settings are pydantic-settings objects
built here, at the edge (the CLI, `serve`), and passed in; a module deep inside never reads
`os.environ` (tests/unit/test_settings_edge.py holds the list of the few that may).

Environment variables (`MATTERFAB_…`) always win, so the same code runs against the production
stack (docker-compose, Kubernetes) or any other Kafka and S3. Without them, every command finds
the local stack that `matterfab up` started through the state files it wrote in the state
folder, `$MATTERFAB_HOME`, else `./.matterfab` in the current directory (no search of parent
directories: a command run elsewhere never picks up a stranger's stack): `stack.json`
(endpoints and credentials, present while the stack runs) and `kek.b64` (the key-encryption
key, kept across restarts because wrapped keys outlive a run). `describe_stack()` says which
stack a command uses.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab.errors import StackError

HOME_ENV = "MATTERFAB_HOME"
STATE_DIR_NAME = ".matterfab"
STACK_FILE = "stack.json"
KEK_FILE = "kek.b64"
KEK_ENV = "MATTERFAB_KEK"
KEK_FILE_ENV = "MATTERFAB_KEK_FILE"  # a file holding the base64 key (Docker/Kubernetes secrets)
KEK_SIZE = 32  # AES-256 key-encryption key (DESIGN §4: AES-256-GCM wrapping)

T = TypeVar("T")


class PathSettings(BaseSettings):
    """Folders and files of this machine (env `MATTERFAB_HOME`, `MATTERFAB_PROFILES_DIR`, …)."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_", extra="ignore", env_ignore_empty=True
    )

    # The local state folder; unset: `./.matterfab` in the current directory.
    home: Path | None = None
    # The signer's attestation profiles; unset: `<state folder>/profiles`.
    profiles_dir: Path | None = None
    # The topics file; unset: `deploy/topics.yaml` of the checkout (or image) this runs from.
    topics_file: Path | None = None


class LogSettings(BaseSettings):
    """How much to say (env `MATTERFAB_LOG_LEVEL`, `MATTERFAB_DEBUG`)."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_", extra="ignore", env_ignore_empty=True
    )

    log_level: str = "INFO"
    # Tracebacks for CLI failures (also `matterfab --debug`): 1, true, yes or on; else off.
    debug: bool = False

    @field_validator("debug", mode="before")
    @classmethod
    def _lenient_debug(cls, value: object) -> bool:
        return str(value).strip().lower() in ("1", "true", "yes", "on")

    @property
    def verbose(self) -> bool:
        """Whether the log level asks for everything (`DEBUG`)."""
        return self.log_level.upper() == "DEBUG"


class Pbkdf2Settings(BaseSettings):
    """`MATTERFAB_PBKDF2_NO_SHA_NI=1`: the native PBKDF2 runs as on a CPU without SHA-NI."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_PBKDF2_", extra="ignore", env_ignore_empty=True
    )

    no_sha_ni: bool = False

    @field_validator("no_sha_ni", mode="before")
    @classmethod
    def _only_one(cls, value: object) -> bool:
        return str(value).strip() == "1"  # as documented: `=1` and nothing else


class AllocatorSettings(BaseSettings):
    """The allocator's stall watch (env `MATTERFAB_ALLOCATOR_STALL_S`)."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_ALLOCATOR_", extra="ignore", env_ignore_empty=True
    )

    # An order whose ready count has not grown this long is re-driven (seconds).
    stall_s: float = Field(30.0, gt=0)


def state_dir(settings: PathSettings | None = None) -> Path:
    """The local state folder: $MATTERFAB_HOME, else `./.matterfab` (never a parent's)."""
    home = (settings or PathSettings()).home
    if home is not None:
        return home.expanduser().resolve()
    return Path.cwd().resolve() / STATE_DIR_NAME


def profiles_dir(settings: PathSettings | None = None) -> Path:
    """$MATTERFAB_PROFILES_DIR, else `<state folder>/profiles`."""
    s = settings or PathSettings()
    if s.profiles_dir is not None:
        return s.profiles_dir.expanduser().resolve()
    return state_dir(s) / "profiles"


def named_secret(variable: str) -> str | None:
    """The value of an environment variable a profile names for a secret (an HSM PIN, a key
    password), or None when unset: the variable's name is the user's, so no settings class
    can declare it."""
    return os.environ.get(variable)


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSettings(BaseSettings):
    """How to reach Kafka (env `MATTERFAB_KAFKA_BOOTSTRAP`, `MATTERFAB_KAFKA_CLIENT_ID`, …).

    Security follows Kafka's own client settings: `security_protocol` PLAINTEXT, SSL,
    SASL_PLAINTEXT or SASL_SSL; SASL with mechanism PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512,
    a username and a password (or a file holding it, for mounted secrets); TLS trusting
    `ssl_cafile` (else the system's roots), a client certificate and key for mutual TLS, and
    hostname checking (on unless switched off). `matterfab.kafka.client_options` turns these
    into aiokafka's arguments.
    """

    # An empty variable counts as unset (compose passes `${VAR:-}` through as "").
    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_KAFKA_", extra="ignore", env_ignore_empty=True
    )

    bootstrap: str
    client_id: str = "matterfab"
    request_timeout_ms: int = 30000
    # How long starting a client (bootstrap, metadata) may take before Kafka counts as
    # unreachable: a command says so within this time instead of hanging.
    connect_timeout_s: float = Field(10.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    # The broker is the local stack's embedded one (noida-db): only then do clients take its
    # workarounds (kafka.py: paced empty fetches, empty assignments, no idempotent producers).
    # `make up` and the local stack's state set it; against Apache Kafka it stays off.
    embedded: bool = False

    @model_validator(mode="after")
    def _security_fits(self) -> KafkaSettings:
        errors = kafka_security_errors(self)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def uses_ssl(self) -> bool:
        """Whether connections are TLS (SSL or SASL_SSL)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether connections authenticate with SASL (SASL_PLAINTEXT or SASL_SSL)."""
        return self.security_protocol.startswith("SASL_")

    def sasl_password_value(self) -> str:
        """The SASL password: MATTERFAB_KAFKA_SASL_PASSWORD, else the file's first line."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is None:
            raise StackError(
                "MATTERFAB_KAFKA_SASL_PASSWORD or MATTERFAB_KAFKA_SASL_PASSWORD_FILE must be set "
                f"with MATTERFAB_KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
            )
        try:
            text = self.sasl_password_file.read_text()
        except OSError as exc:
            raise StackError(
                f"MATTERFAB_KAFKA_SASL_PASSWORD_FILE: cannot read {self.sasl_password_file} "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
        password = text.splitlines()[0] if text.strip() else ""
        if not password:
            raise StackError(
                f"MATTERFAB_KAFKA_SASL_PASSWORD_FILE: {self.sasl_password_file} is empty"
            )
        return password


def kafka_security_errors(s: KafkaSettings) -> list[str]:
    """Every rule the Kafka security settings break, each naming its variable."""
    env = "MATTERFAB_KAFKA_"
    errors: list[str] = []
    protocol = f"{env}SECURITY_PROTOCOL={s.security_protocol}"
    if s.uses_sasl:
        if s.sasl_mechanism is None:
            errors.append(f"{env}SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)} "
                          f"with {protocol}")  # fmt: skip
        if not s.sasl_username:
            errors.append(f"{env}SASL_USERNAME must be set with {protocol}")
        if s.sasl_password is None and s.sasl_password_file is None:
            errors.append(f"{env}SASL_PASSWORD or {env}SASL_PASSWORD_FILE must be set with "
                          f"{protocol}")  # fmt: skip
        if s.sasl_password is not None and s.sasl_password_file is not None:
            errors.append(f"set only one of {env}SASL_PASSWORD and {env}SASL_PASSWORD_FILE")
    else:
        for name in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file"):
            if getattr(s, name) is not None:
                errors.append(f"{env}{name.upper()} is set but {protocol} uses no SASL "
                              "(use SASL_PLAINTEXT or SASL_SSL)")  # fmt: skip
    if not s.uses_ssl:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
            if getattr(s, name) is not None:
                errors.append(f"{env}{name.upper()} is set but {protocol} uses no TLS "
                              "(use SSL or SASL_SSL)")  # fmt: skip
    if (s.ssl_certfile is None) != (s.ssl_keyfile is None):
        errors.append(f"{env}SSL_CERTFILE and {env}SSL_KEYFILE must be set together (mutual TLS)")
    return errors


class S3Settings(BaseSettings):
    """How to reach the object store (env `MATTERFAB_S3_ENDPOINT`, `_ACCESS_KEY`, …)."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_S3_", extra="ignore", env_ignore_empty=True
    )

    endpoint: str
    access_key: str
    secret_key: SecretStr
    bucket: str = "matterfab"
    region: str = "us-east-1"
    # A private endpoint's CA (PEM): trusted in addition to the system's roots.
    ca_bundle: Path | None = None
    # `path`: https://endpoint/bucket/key (MinIO, SeaweedFS); `virtual`:
    # https://bucket.endpoint/key (AWS S3's default).
    addressing_style: Literal["path", "virtual"] = "path"
    # Connections kept open per client: services issue thousands of small PUTs a minute.
    max_pool_connections: int = 50
    # How long one call keeps retrying a store that is down (connection refused, 5xx) before
    # it gives up: long enough to ride out a restart of the store, bounded so nothing hangs.
    retry_deadline_s: float = 60.0
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 10.0
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
        f"(no running stack found at {state_dir() / STACK_FILE}; {HOME_ENV} names another "
        "state folder)"
    )


# Commands that answer a person or a script (everything but `serve` and `station run`) give up
# on an unreachable dependency within this many seconds (issue #15: a bounded, one-line
# failure); long-running processes keep their longer retry deadlines. Set by the CLI.
_command_deadline_s: float | None = None


def use_command_deadline(seconds: float | None) -> None:
    """Bound how long one command waits for Kafka and S3 (None: the settings' own deadlines)."""
    global _command_deadline_s
    _command_deadline_s = seconds


def settings_problem(exc: ValidationError, prefix: str) -> str:
    """One line naming each variable and the rule it breaks (never the value: it may be secret)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{prefix}{loc[0].upper()}: {message}" if loc else message)
    return "; ".join(parts)


def _build(cls: type[T], prefix: str, **kwargs: Any) -> T:
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        raise StackError(settings_problem(exc, prefix)) from None


# Who hears which stack a command uses (the CLI sets it: a line on stderr); said once.
_announce: Callable[[str], None] | None = None


def announce_stack(callback: Callable[[str], None] | None) -> None:
    """Call `callback` with `describe_stack()` the first time Kafka or S3 settings are loaded."""
    global _announce
    _announce = callback


def _announce_once() -> None:
    global _announce
    callback, _announce = _announce, None
    if callback is not None:
        callback(describe_stack())


def describe_stack() -> str:
    """One line naming the stack in use: the state folder and/or the variables, and endpoints.

    `stack: /w/.matterfab (kafka 127.0.0.1:19092, s3 http://127.0.0.1:18333)`, or
    `stack: environment (kafka …, s3 …)` when MATTERFAB_KAFKA_BOOTSTRAP and MATTERFAB_S3_ENDPOINT
    point elsewhere; never a credential.
    """
    home = state_dir()
    try:
        state = read_stack_state(home) or {}
    except StackError:
        state = {}
    parts: list[str] = []
    from_state = False
    for name, env, key in (
        ("kafka", "MATTERFAB_KAFKA_BOOTSTRAP", "bootstrap"),
        ("s3", "MATTERFAB_S3_ENDPOINT", "s3_endpoint"),
    ):
        if os.environ.get(env):
            parts.append(f"{name} {os.environ[env]} from {env}")
        elif key in state:
            parts.append(f"{name} {state[key]}")
            from_state = True
        else:
            parts.append(f"{name} not found")
    if from_state:
        where = str(home)
    elif all(" from " in part for part in parts):
        where = "environment"
    else:
        where = f"none running at {home}"
    return f"stack: {where} ({', '.join(parts)})"


def load_log_settings() -> LogSettings:
    """The log settings from the environment; StackError naming a bad variable."""
    return _build(LogSettings, "MATTERFAB_")


def load_kafka_settings() -> KafkaSettings:
    """Kafka settings from the environment, else from the running local stack."""
    _announce_once()
    if os.environ.get("MATTERFAB_KAFKA_BOOTSTRAP"):
        settings = _build(KafkaSettings, "MATTERFAB_KAFKA_")
    else:
        state = read_stack_state()
        if state is None or "bootstrap" not in state:
            raise _missing("Kafka", "MATTERFAB_KAFKA_BOOTSTRAP")
        # The local stack's broker is always the embedded one.
        settings = _build(
            KafkaSettings, "MATTERFAB_KAFKA_", bootstrap=state["bootstrap"], embedded=True
        )
    if _command_deadline_s is not None and "MATTERFAB_KAFKA_CONNECT_TIMEOUT_S" not in os.environ:
        settings = settings.model_copy(
            update={"connect_timeout_s": min(settings.connect_timeout_s, _command_deadline_s)}
        )
    return settings


def load_s3_settings() -> S3Settings:
    """S3 settings from the environment, else from the running local stack."""
    _announce_once()
    if os.environ.get("MATTERFAB_S3_ENDPOINT"):
        absent = [
            name
            for name in ("MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY")
            if not os.environ.get(name)
        ]
        if absent:
            # An endpoint without credentials would be an open store or a confusing 403 later.
            raise StackError(f"MATTERFAB_S3_ENDPOINT is set but {', '.join(absent)} is not")
        settings = _build(S3Settings, "MATTERFAB_S3_")
    else:
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
        if not os.environ.get("MATTERFAB_S3_CA_BUNDLE") and state.get("s3_ca_bundle"):
            kwargs["ca_bundle"] = state["s3_ca_bundle"]
        settings = _build(S3Settings, "MATTERFAB_S3_", **kwargs)
    if _command_deadline_s is not None and "MATTERFAB_S3_RETRY_DEADLINE_S" not in os.environ:
        settings = settings.model_copy(
            update={"retry_deadline_s": min(settings.retry_deadline_s, _command_deadline_s)}
        )
    return settings


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
