"""Where settings come from: environment first, else the local stack's state folder."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from matterfab import config
from matterfab.config import S3Settings
from matterfab.errors import StackError
from matterfab.s3 import ObjectStore, virtual_hosted_endpoint


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MATTERFAB_* from the developer's shell, and a fresh cwd."""
    for name in list(os.environ):
        if name.startswith("MATTERFAB_"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def write_state(home: Path, **extra: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    state = {
        "bootstrap": "127.0.0.1:19092",
        "s3_endpoint": "http://127.0.0.1:18333",
        "s3_access_key": "stack-key",
        "s3_secret_key": "stack-secret",
        "s3_bucket": "matterfab",
        **extra,
    }
    (home / config.STACK_FILE).write_text(json.dumps(state))


def test_state_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATTERFAB_HOME", str(tmp_path / "elsewhere"))
    assert config.state_dir() == (tmp_path / "elsewhere").resolve()


def test_state_dir_never_searches_parent_directories(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Issue #23: a `.matterfab` above the current directory is somebody else's stack.
    (tmp_path / "work" / ".matterfab").mkdir()
    write_state(tmp_path / "work" / ".matterfab")
    deep = tmp_path / "work" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert config.state_dir() == (deep / ".matterfab").resolve()
    with pytest.raises(StackError, match=f"no running stack found at {deep / '.matterfab'}"):
        config.load_kafka_settings()


def test_state_dir_defaults_to_cwd(tmp_path: Path) -> None:
    assert config.state_dir() == (tmp_path / "work" / ".matterfab").resolve()


def test_kafka_settings_env_wins_over_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_state(tmp_path / "work" / ".matterfab")
    assert config.load_kafka_settings().bootstrap == "127.0.0.1:19092"
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("MATTERFAB_KAFKA_CLIENT_ID", "erp")
    settings = config.load_kafka_settings()
    assert (settings.bootstrap, settings.client_id) == ("kafka:9092", "erp")


def test_s3_settings_from_stack_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_state(tmp_path / "work" / ".matterfab")
    local = config.load_s3_settings()
    assert local.endpoint == "http://127.0.0.1:18333"
    assert local.access_key == "stack-key"
    assert local.secret_key.get_secret_value() == "stack-secret"
    assert "stack-secret" not in repr(local)  # secrets never show in logs or tracebacks
    monkeypatch.setenv("MATTERFAB_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("MATTERFAB_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("MATTERFAB_S3_SECRET_KEY", "s")
    monkeypatch.setenv("MATTERFAB_S3_BUCKET", "factory")
    remote = config.load_s3_settings()
    assert (remote.endpoint, remote.access_key, remote.bucket) == (
        "http://minio:9000",
        "k",
        "factory",
    )


def test_s3_endpoint_without_credentials_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("MATTERFAB_S3_ACCESS_KEY", "k")
    with pytest.raises(StackError, match="MATTERFAB_S3_SECRET_KEY"):
        config.load_s3_settings()


def test_nothing_configured_names_what_is_missing() -> None:
    with pytest.raises(StackError, match=r"MATTERFAB_KAFKA_BOOTSTRAP.*matterfab up"):
        config.load_kafka_settings()
    with pytest.raises(StackError, match=r"MATTERFAB_S3_ENDPOINT.*matterfab up"):
        config.load_s3_settings()


def test_kek_from_env_file_and_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(StackError, match="MATTERFAB_KEK"):
        config.load_kek()
    stack_key = bytes(range(32))
    home = tmp_path / "work" / ".matterfab"
    home.mkdir()
    (home / config.KEK_FILE).write_text(base64.b64encode(stack_key).decode() + "\n")
    assert config.load_kek() == stack_key
    secret = tmp_path / "kek-secret"
    secret.write_text(base64.b64encode(b"\x01" * 32).decode())
    monkeypatch.setenv("MATTERFAB_KEK_FILE", str(secret))
    assert config.load_kek() == b"\x01" * 32
    monkeypatch.setenv("MATTERFAB_KEK", base64.b64encode(b"\x02" * 32).decode())
    assert config.load_kek() == b"\x02" * 32


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (base64.b64encode(b"short").decode(), "must be 32 bytes, got 5"),
        ("not base64 !!", "must be base64"),
    ],
)
def test_bad_kek_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str, rule: str) -> None:
    monkeypatch.setenv("MATTERFAB_KEK", value)
    with pytest.raises(StackError, match=rule):
        config.load_kek()


def test_missing_kek_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATTERFAB_KEK_FILE", str(tmp_path / "absent"))
    with pytest.raises(StackError, match="absent"):
        config.load_kek()


def test_local_stack_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = config.LocalStackSettings()
    assert (defaults.kafka_port, defaults.s3_port) == (19092, 18333)
    monkeypatch.setenv("MATTERFAB_KAFKA_PORT", "29092")
    monkeypatch.setenv("MATTERFAB_S3_MASTER_PORT", "12345")
    env = config.LocalStackSettings()
    assert (env.kafka_port, env.s3_master_port) == (29092, 12345)


def s3_env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    monkeypatch.setenv("MATTERFAB_S3_ENDPOINT", "https://minio.example:9000")
    monkeypatch.setenv("MATTERFAB_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("MATTERFAB_S3_SECRET_KEY", "s3-secret-value")
    for name, value in extra.items():
        monkeypatch.setenv(f"MATTERFAB_S3_{name}", value)


def test_s3_production_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s3_env(monkeypatch, CA_BUNDLE=str(tmp_path / "ca.pem"), ADDRESSING_STYLE="virtual",
           REGION="eu-central-1")  # fmt: skip
    s = config.load_s3_settings()
    assert (s.ca_bundle, s.addressing_style, s.region) == (
        tmp_path / "ca.pem",
        "virtual",
        "eu-central-1",
    )
    fields = S3Settings.model_fields
    assert (fields["ca_bundle"].default, fields["addressing_style"].default) == (None, "path")


def test_virtual_hosted_endpoint_puts_the_bucket_in_the_host() -> None:
    assert virtual_hosted_endpoint("https://s3.eu-central-1.amazonaws.com", "factory") == (
        "https://factory.s3.eu-central-1.amazonaws.com"
    )
    assert virtual_hosted_endpoint("https://minio:9000", "b") == "https://b.minio:9000"


def test_bad_s3_settings_name_the_variable_not_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    s3_env(monkeypatch, ADDRESSING_STYLE="sideways")
    with pytest.raises(StackError, match="MATTERFAB_S3_ADDRESSING_STYLE: Input should be") as e:
        config.load_s3_settings()
    assert "s3-secret-value" not in str(e.value)


def test_ca_bundle_that_is_not_a_certificate_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    s3_env(monkeypatch, CA_BUNDLE=str(tmp_path / "ca.pem"))
    with pytest.raises(StackError, match=r"MATTERFAB_S3_CA_BUNDLE: .* holds no PEM certificate"):
        ObjectStore(config.load_s3_settings())
    s3_env(monkeypatch, CA_BUNDLE=str(tmp_path / "absent.pem"))
    with pytest.raises(StackError, match="MATTERFAB_S3_CA_BUNDLE: cannot read"):
        ObjectStore(config.load_s3_settings())


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker compose passes `${VAR:-}` through as an empty string."""
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "kafka:9092")
    for name in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SSL_CAFILE"):
        monkeypatch.setenv(f"MATTERFAB_KAFKA_{name}", "")
    s = config.load_kafka_settings()
    assert (s.security_protocol, s.sasl_mechanism, s.ssl_cafile) == ("PLAINTEXT", None, None)


def test_commands_get_a_short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "kafka:9092")
    s3_env(monkeypatch)
    try:
        config.use_command_deadline(10.0)
        assert config.load_s3_settings().retry_deadline_s == 10.0
        assert config.load_kafka_settings().connect_timeout_s == 10.0
        monkeypatch.setenv("MATTERFAB_S3_RETRY_DEADLINE_S", "3")
        assert config.load_s3_settings().retry_deadline_s == 3.0  # the variable wins
    finally:
        config.use_command_deadline(None)
    monkeypatch.delenv("MATTERFAB_S3_RETRY_DEADLINE_S")
    assert config.load_s3_settings().retry_deadline_s == 60.0  # services keep theirs


def test_describe_stack_names_the_state_folder_and_endpoints(tmp_path: Path) -> None:
    home = (tmp_path / "work" / ".matterfab").resolve()
    assert config.describe_stack() == (
        f"stack: none running at {home} (kafka not found, s3 not found)"
    )
    write_state(home)
    line = config.describe_stack()
    assert line == f"stack: {home} (kafka 127.0.0.1:19092, s3 http://127.0.0.1:18333)"
    assert "stack-secret" not in line and "stack-key" not in line


def test_describe_stack_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "kafka.prod:9093")
    monkeypatch.setenv("MATTERFAB_S3_ENDPOINT", "https://s3.prod")
    assert config.describe_stack() == (
        "stack: environment (kafka kafka.prod:9093 from MATTERFAB_KAFKA_BOOTSTRAP, "
        "s3 https://s3.prod from MATTERFAB_S3_ENDPOINT)"
    )


def test_the_stack_is_announced_once(tmp_path: Path) -> None:
    write_state(tmp_path / "work" / ".matterfab")
    heard: list[str] = []
    config.announce_stack(heard.append)
    try:
        config.load_kafka_settings()
        config.load_s3_settings()
    finally:
        config.announce_stack(None)
    assert len(heard) == 1 and heard[0].startswith("stack: ")


def test_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.load_log_settings().log_level == "INFO"
    assert not config.load_log_settings().debug
    for value, on in (("1", True), ("yes", True), ("on", True), ("0", False), ("maybe", False)):
        monkeypatch.setenv("MATTERFAB_DEBUG", value)
        assert config.load_log_settings().debug is on, value
    monkeypatch.setenv("MATTERFAB_LOG_LEVEL", "debug")
    assert config.load_log_settings().verbose


def test_profiles_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config.profiles_dir() == (tmp_path / "work" / ".matterfab" / "profiles").resolve()
    monkeypatch.setenv("MATTERFAB_PROFILES_DIR", str(tmp_path / "pp"))
    assert config.profiles_dir() == (tmp_path / "pp").resolve()
