"""Alert rules and the dashboard: promtool runs the rule unit tests, and every metric they use
is one the code exports.

`promtool` is Debian's prometheus package (Makefile APT_PACKAGES); a missing install fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from matterfab import health  # noqa: F401  (registers matterfab_ready)
from matterfab.config import KafkaSettings
from matterfab.messages import OrderEvent
from matterfab.services.monitor.app import Monitor, _MonitorCollector
from matterfab.services.station import printing  # noqa: F401  (registers matterfab_labels)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "unit" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "matterfab.json"
K8S = ROOT / "deploy" / "k8s"
DOC = ROOT / "docs" / "alerts.md"
PROMTOOL = shutil.which("promtool")
METRIC_RE = re.compile(r"\b(matterfab_[a-z0-9_]+|up)\b")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool missing: `make apt` installs Debian's prometheus package"
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def exported_metrics() -> set[str]:
    """Every series name the services, stations and monitor expose (as scraped)."""
    names = {"up"}  # Prometheus's own, per target
    families = list(REGISTRY.collect())
    monitor = Monitor(KafkaSettings(bootstrap="127.0.0.1:1"))
    monitor.board.apply(
        OrderEvent(order_id="O", status="progress", ready=1, quantity=2, at=datetime.now(UTC))
    )
    families += list(_MonitorCollector(monitor).collect())
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [c for t in tests for c in t["alert_rule_test"]]
    for rule in rules():
        mine = [c for c in checks if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: never seen firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: never seen quiet"


def test_the_rule_tests_can_fail(tmp_path: Path) -> None:
    """A rule whose threshold drifts (5 % -> 50 %) no longer passes its unit tests."""
    text = RULES.read_text()
    assert text.count(") > 0.05") == 2
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    (tmp_path / "deploy" / "prometheus" / "alerts.yaml").write_text(
        text.replace(") > 0.05", ") > 0.5")
    )
    (tmp_path / "tests" / "unit" / "prometheus").mkdir(parents=True)
    copy = tmp_path / "tests" / "unit" / "prometheus" / "alerts.test.yaml"
    copy.write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", str(copy), cwd=tmp_path)
    assert done.returncode != 0
    assert "MatterfabStationFailureRateHigh" in done.stdout + done.stderr


def test_every_rule_says_what_and_what_to_do() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", DOC.read_text(), flags=re.M)
    }
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        runbook = rule["annotations"]["runbook"]
        link = re.match(r"docs/alerts\.md#([a-z0-9-]+): \S", runbook)
        assert link and link[1] in anchors, f"{rule['alert']}: runbook {runbook!r}"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_exported(source: str) -> None:
    exprs = [r["expr"] for r in rules()] if source == "alerts" else dashboard_exprs()
    used = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    assert used
    missing = used - exported_metrics()
    assert not missing, f"{source} use metrics nothing exports: {sorted(missing)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, as a recording rule, passes promtool's checks."""
    exprs = dashboard_exprs()
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(recording))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for signal in ("lag", "devices per minute", "failure", "dead letters"):
        assert signal in titles


def test_k8s_ships_the_same_rules_and_dashboard() -> None:
    objects = [
        d
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    docs = {d["kind"]: d for d in objects if d["kind"] in ("PrometheusRule", "PodMonitor")}
    docs["ConfigMap"] = next(
        d for d in objects if d["metadata"]["name"] == "matterfab-grafana-dashboard"
    )
    assert docs["PrometheusRule"]["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    cm = docs["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["matterfab.json"]) == json.loads(DASHBOARD.read_text())
    # The PodMonitor's job (namespace/name) is the one the rules select.
    pm = docs["PodMonitor"]
    job = f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"
    assert re.fullmatch("matterfab.*", job)
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    for p in K8S.glob("*.yaml"):
        for d in yaml.safe_load_all(p.read_text()):
            if d and d["kind"] == "Deployment":
                [c] = d["spec"]["template"]["spec"]["containers"]
                assert {port["name"] for port in c["ports"]} & ports, d["metadata"]["name"]
