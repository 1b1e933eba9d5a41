"""docker-compose.yml parses and agrees with the code: services, env names, ports, commands."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from matterfab.cli import stack as stack_cli
from matterfab.config import KEK_FILE_ENV, KafkaSettings, S3Settings
from matterfab.services import registry
from matterfab.services.monitor.main import MonitorSettings
from matterfab.topics import default_topics_file

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = list(registry.SERVICES)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    prefix = settings_cls.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in settings_cls.model_fields}


def test_services_present(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "minio", "minio-init", "topics", *APP_SERVICES}
    assert set(stack_cli.SERVICES) <= set(APP_SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    command = list(registry.SERVICES[name].command)
    if name == "station":
        assert service["command"][:3] == command  # plus the line's options
    else:
        assert service["command"] == command
    assert service["image"] == "matterfab:latest"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    env = service["environment"]
    assert env["MATTERFAB_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["MATTERFAB_S3_ENDPOINT"] == "http://minio:9000"
    for required in ("MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY", "MATTERFAB_S3_BUCKET"):
        assert required in env
    # Every Kafka/S3 variable named in compose is one the settings classes actually read.
    known = (
        env_names(KafkaSettings)
        | env_names(S3Settings)
        | env_names(MonitorSettings)
        | {KEK_FILE_ENV}
    )
    assert {k for k in env if k.startswith("MATTERFAB_")} <= known
    # Secrets come from .env / secret files, never written into the compose file.
    assert env["MATTERFAB_S3_SECRET_KEY"].startswith("${")
    assert env[KEK_FILE_ENV] == "/run/secrets/kek"
    assert "kek" in service["secrets"]
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_kafka_is_kraft_and_listens_where_services_look(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://:9092" in env["KAFKA_LISTENERS"].split(",")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics.yaml is the only source
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])


def test_minio_serves_where_services_look(compose: dict[str, Any]) -> None:
    minio = compose["services"]["minio"]
    command = minio["command"]
    assert command[command.index("--address") + 1] == ":9000"
    app_env = compose["services"]["allocator"]["environment"]
    # MinIO's root user is the one the services authenticate as.
    assert minio["environment"]["MINIO_ROOT_USER"] == app_env["MATTERFAB_S3_ACCESS_KEY"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == app_env["MATTERFAB_S3_SECRET_KEY"]
    init = compose["services"]["minio-init"]
    assert init["image"].startswith("minio/mc:")
    assert "mc mb --ignore-existing" in init["command"][0]
    assert "MATTERFAB_S3_BUCKET" in init["command"][0]


def test_topics_job_runs_a_real_command(compose: dict[str, Any]) -> None:
    job = compose["services"]["topics"]
    assert job["command"][:3] == ["matterfab", "topics", "apply"]
    assert job["depends_on"]["kafka"]["condition"] == "service_healthy"
    app = typer.Typer()
    stack_cli.register(app)
    result = CliRunner().invoke(app, [*job["command"][1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "--replication-factor" in result.output


def test_image_ships_the_topics_file() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY deploy/topics.yaml ./deploy/topics.yaml" in dockerfile
    assert "MATTERFAB_TOPICS_FILE=/app/deploy/topics.yaml" in dockerfile
    assert default_topics_file() == ROOT / "deploy" / "topics.yaml"
    assert (ROOT / "deploy" / "secrets" / ".gitignore").is_file()  # secrets never committed


def test_connection_settings_pass_through_and_load(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every production connection setting is wired, from .env (`${VAR:-default}`), and the
    defaults (compose's own interpolation) load as plain settings on the bundled stack."""
    env = compose["services"]["allocator"]["environment"]
    wired = {
        "MATTERFAB_KAFKA_SECURITY_PROTOCOL", "MATTERFAB_KAFKA_SASL_MECHANISM",
        "MATTERFAB_KAFKA_SASL_USERNAME", "MATTERFAB_KAFKA_SASL_PASSWORD",
        "MATTERFAB_KAFKA_SASL_PASSWORD_FILE", "MATTERFAB_KAFKA_SSL_CAFILE",
        "MATTERFAB_KAFKA_SSL_CERTFILE", "MATTERFAB_KAFKA_SSL_KEYFILE",
        "MATTERFAB_KAFKA_SSL_CHECK_HOSTNAME", "MATTERFAB_S3_CA_BUNDLE",
        "MATTERFAB_S3_ADDRESSING_STYLE", "MATTERFAB_S3_REGION",
    }  # fmt: skip
    assert wired <= set(env)
    for name in wired:
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]*\}}", env[name]), (name, env[name])
    for name in list(os.environ):
        if name.startswith("MATTERFAB_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        default = re.fullmatch(r"\$\{\w+:-([^}]*)\}", str(value))
        monkeypatch.setenv(name, default.group(1) if default else str(value))
    monkeypatch.setenv("MATTERFAB_S3_SECRET_KEY", "from-dot-env")
    kafka = KafkaSettings()
    s3 = S3Settings()
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.ssl_check_hostname) == (
        "PLAINTEXT",
        None,
        True,
    )
    assert (s3.ca_bundle, s3.addressing_style, s3.region) == (None, "path", "us-east-1")
