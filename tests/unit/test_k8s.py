"""deploy/k8s manifests, checked against the code they deploy.

No cluster here: the checks are structural (every object well-formed, references resolve) and
cross-checks with the code: env names are ones the code reads, commands exist, metrics ports
agree between ConfigMap, container and Service, and KEDA triggers name the real consumer groups
and topics (deploy/topics.yaml).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from matterfab import config, messages, runtime
from matterfab.cli.main import SERVICES
from matterfab.services import registry
from matterfab.services.monitor.main import MonitorSettings
from matterfab.topics import load_topics

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CODE = ROOT / "shared" / "matterfab" / "services"
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "matterfab"
# Stream services run by runtime.serve (a consumer group, started by `up`); every service of
# the registry is a Deployment; KEDA scales the ones the registry marks scaled.
PIPELINE = tuple(s.name for s in registry.SERVICES.values() if s.group_id and s.up)
DEPLOYMENTS = tuple(registry.SERVICES)
SCALED = tuple(s.name for s in registry.SERVICES.values() if s.scaled)
MIN_MEMORY_LIMIT_MI = 256


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


DOCS = [d for docs in manifests().values() for d in docs]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap() -> dict[str, str]:
    return of_kind("ConfigMap")["matterfab-config"]["data"]


def mebibytes(quantity: str) -> float:
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "K": 1e3 / 2**20,
        "M": 1e6 / 2**20,
        "G": 1e9 / 2**20,
    }
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, quantity
    return float(match[1]) * (units[match[2]] if match[2] else 1 / 2**20)


def settings_env(cls: type[BaseSettings]) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def env_names_the_code_reads() -> set[str]:
    """Settings fields with their prefixes, plus every MATTERFAB_ name spelled in the source."""
    from matterfab.services.station.config import StationSettings

    names = set()
    for cls in (config.KafkaSettings, config.S3Settings, MonitorSettings, StationSettings):
        names |= settings_env(cls)
    for service in PIPELINE:
        names |= settings_env(type(runtime.service_settings(service)))
    for path in (ROOT / "shared" / "matterfab").rglob("*.py"):
        names |= set(re.findall(r"\bMATTERFAB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def spec_call(service: str) -> dict[str, ast.expr]:
    """Keyword arguments of the spec call (BatchSpec or WindowSpec) in
    matterfab/services/<service>/main.py."""
    tree = ast.parse((SERVICE_CODE / service / "main.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "BatchSpec",
            "WindowSpec",
        ):
            return {k.arg: k.value for k in node.keywords if k.arg}
    raise AssertionError(f"no BatchSpec(...) in {SERVICE_CODE / service / 'main.py'}")


def test_every_file_parses_and_every_object_is_named() -> None:
    assert DOCS
    for doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc["metadata"].get("name"), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == sorted(manifests())


def test_one_deployment_and_service_per_component() -> None:
    assert sorted(of_kind("Deployment")) == sorted(DEPLOYMENTS)
    assert sorted(of_kind("Service")) == sorted(DEPLOYMENTS)


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_runs_a_real_command(name: str) -> None:
    c = container(of_kind("Deployment")[name])
    argv = c.get("command", []) + c.get("args", [])
    assert argv == list(registry.SERVICES[name].command)
    if name == "station":
        assert callable(importlib.import_module("matterfab.cli.station").run)
    else:
        assert name in SERVICES
        assert callable(importlib.import_module(registry.SERVICES[name].module).main)
    assert c["image"] == container(of_kind("Deployment")["monitor"])["image"]  # one image


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_env_names_are_ones_the_code_reads(name: str) -> None:
    known = env_names_the_code_reads()
    c = container(of_kind("Deployment")[name])
    names = [e["name"] for e in c.get("env", [])]
    for source in c.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        names += list(of_kind("ConfigMap")[ref]["data"])
    unknown = sorted(n for n in names if n not in known)
    assert not unknown, f"{name}: no code reads {unknown}"
    for e in c.get("env", []):
        # Secrets only through references, never as literal values in a manifest.
        if any(w in e["name"] for w in ("SECRET", "KEK", "PIN", "ACCESS_KEY")):
            assert "valueFrom" in e and "value" not in e, e


def test_the_env_check_can_fail() -> None:
    assert "MATTERFAB_KAFKA_BOOTSTRAP" in env_names_the_code_reads()
    assert "MATTERFAB_SIGNER_METRICS_PORT" in env_names_the_code_reads()
    assert "MATTERFAB_KAFKA_BOOTSTRAPS" not in env_names_the_code_reads()


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_metrics_port_agrees_between_configmap_container_and_service(name: str) -> None:
    data = configmap()
    service_info = registry.SERVICES[name]
    assert data[service_info.metrics_host_env] == "0.0.0.0"  # scrapable from outside the pod
    port = int(data[service_info.metrics_port_env])
    assert port == service_info.metrics_port  # the port `matterfab up` gives it locally
    deployment = of_kind("Deployment")[name]
    c = container(deployment)
    [declared] = c["ports"]
    assert declared["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in (declared["name"], port)
    service = of_kind("Service")[name]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    [exposed] = service["spec"]["ports"]
    assert exposed["targetPort"] in (declared["name"], port)
    assert exposed["port"] == port


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_resources_requested_and_limited(name: str) -> None:
    resources = container(of_kind("Deployment")[name])["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), (name, kind)
    limit = mebibytes(resources["limits"]["memory"])
    assert limit >= MIN_MEMORY_LIMIT_MI
    assert mebibytes(resources["requests"]["memory"]) <= limit


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_secrets_and_volumes_resolve(name: str) -> None:
    deployment = of_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    assert all(m["name"] in volumes for m in mounts.values())
    documented = (K8S / "kustomization.yaml").read_text()
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    secrets |= {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for secret in secrets:
        assert f"create secret generic {secret}" in documented, secret
    env = {e["name"] for e in c.get("env", [])}
    if name in PIPELINE:
        # runtime.serve loads the KEK from MATTERFAB_KEK_FILE: its folder must be the secret.
        kek_dir = str(Path(configmap()["MATTERFAB_KEK_FILE"]).parent)
        assert kek_dir in mounts and "secret" in volumes[mounts[kek_dir]["name"]]
    if name != "monitor":
        assert {"MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY"} <= env
    if name == "signer":
        profiles = next(e["value"] for e in c["env"] if e["name"] == "MATTERFAB_PROFILES_DIR")
        profile_mounts = [p for p in mounts if Path(p).parent == Path(profiles)]
        assert profile_mounts and all(
            "secret" in volumes[mounts[p]["name"]] for p in profile_mounts
        )
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_keda_scales_signer_and_builder_on_their_real_groups_and_topics() -> None:
    scaled = of_kind("ScaledObject")
    assert sorted(scaled) == sorted(SCALED)
    deployments = of_kind("Deployment")
    partitions = {t.name: t.partitions for t in load_topics(ROOT / "deploy" / "topics.yaml")}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        target = obj["spec"]["scaleTargetRef"]
        assert target["name"] in deployments and target.get("kind", "Deployment") == "Deployment"
        call = spec_call(target["name"])
        group = registry.group_id(target["name"])
        topic_const = call["topic"]
        assert isinstance(topic_const, ast.Name)
        topic = getattr(messages, topic_const.id)
        assert topic == registry.SERVICES[name].consumes[0]
        [trigger] = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == configmap()["MATTERFAB_KAFKA_BOOTSTRAP"]
        assert meta["consumerGroup"] == group == f"matterfab-{name}"
        assert meta["topic"] == topic
        assert topic in partitions
        assert int(meta["lagThreshold"]) > 0
        assert meta.get("offsetResetPolicy", "latest") == "earliest"  # as kafka.consumer()
        assert obj["spec"]["minReplicaCount"] >= 1
        assert obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        assert obj["spec"]["maxReplicaCount"] <= partitions[topic]  # more would sit idle


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_connection_secrets_are_optional_mounts_and_readiness_is_healthz(name: str) -> None:
    """Kafka credentials (SASL, CA, client cert) and a private S3 CA come from optional
    Secrets; the ConfigMap's commented file paths point into those mounts; a pod is ready
    only while its dependencies answer (/healthz), alive while it serves (/metrics)."""
    deployment = of_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/run/secrets/matterfab-kafka"]]["secret"] == {
        "secretName": "matterfab-kafka",
        "defaultMode": 0o440,
        "optional": True,
    }
    username = next(e for e in c["env"] if e["name"] == "MATTERFAB_KAFKA_SASL_USERNAME")
    assert username["valueFrom"]["secretKeyRef"]["optional"] is True
    if name != "monitor":
        ca = volumes[mounts["/run/secrets/matterfab-s3-ca"]]["secret"]
        assert ca["secretName"] == "matterfab-s3-ca" and ca["optional"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    text = (K8S / "configmap.yaml").read_text()
    for path in re.findall(r"(/run/secrets/matterfab-(?:kafka|s3-ca)/[\w.-]+)", text):
        assert str(Path(path).parent) in mounts or name == "monitor", path
    assert configmap()["MATTERFAB_KAFKA_SECURITY_PROTOCOL"] in config.SECURITY_PROTOCOLS
