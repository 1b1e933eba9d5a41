"""The service registry agrees with the code it stands for: specs, emits, CLI and export."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from matterfab import messages
from matterfab.cli import main as cli_main
from matterfab.cli import stack as stack_cli
from matterfab.messages import DEAD_LETTER, IMAGES_READY, TOPIC_MESSAGES, export
from matterfab.services import registry
from matterfab.services.station.config import StationSettings

CODE = Path(registry.__file__).parent
STREAM = ("allocator", "signer", "builder", "assembler", "station")


def every_spec(name: str) -> list[dict[str, ast.expr]]:
    tree = ast.parse((CODE / name / "main.py").read_text())
    found = [
        {k.arg: k.value for k in node.keywords if k.arg}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) in ("BatchSpec", "WindowSpec")
    ]
    assert found, f"no BatchSpec(...) or WindowSpec(...) in {name}/main.py"
    return sorted(found, key=lambda call: call["topic"].lineno)


def spec_keywords(name: str) -> dict[str, ast.expr]:
    return every_spec(name)[0]


def test_every_service_has_its_code() -> None:
    for service in registry.SERVICES.values():
        assert (CODE / service.name / "main.py").is_file()
        assert service.module == f"matterfab.services.{service.name}.main"
    folders = {p.parent.name for p in CODE.glob("*/main.py")}
    assert folders == set(registry.SERVICES)


@pytest.mark.parametrize("name", STREAM)
def test_spec_reads_the_registered_topics_and_group(name: str) -> None:
    service = registry.SERVICES[name]
    call = spec_keywords(name)
    topic = call["topic"]
    assert isinstance(topic, ast.Name)
    assert getattr(messages, topic.id) == service.consumes[0]
    extra = set()
    for each in every_spec(name):  # the signer's device-key consumer is a second spec
        extra.add(getattr(messages, ast.unparse(each["topic"])))
        routes = each.get("routes")
        if isinstance(routes, ast.Dict):
            extra |= {getattr(messages, k.id) for k in routes.keys if isinstance(k, ast.Name)}
    if name == "station":
        extra.add(messages.DAC_REPLIES)  # read group-less by station/device_key.py
    assert {service.consumes[0], *extra} == set(service.consumes)
    if name != "station":
        assert ast.unparse(call["group_id"]) == f"registry.group_id({name!r})"


def test_station_group_is_per_line() -> None:
    settings = StationSettings(station_id="S1", line="L7", out=Path("flashed"))
    assert settings.group_id == f"{registry.group_id('station')}-L7"


@pytest.mark.parametrize("name", STREAM)
def test_what_a_service_emits_is_registered(name: str) -> None:
    source = "\n".join(p.read_text() for p in (CODE / name).glob("*.py"))
    emitted = {getattr(messages, t) for t in re.findall(r"\bEmit\(\s*([A-Z_]+)\s*,", source)}
    allowed = {*registry.SERVICES[name].produces, DEAD_LETTER}
    if name == "station":
        allowed.add(IMAGES_READY)  # the re-queue of an image it could not flash
    assert emitted and emitted <= allowed
    assert set(registry.SERVICES[name].produces) <= emitted


def test_cli_and_up_read_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATTERFAB_SIGNER_METRICS_PORT", raising=False)
    monkeypatch.delenv("MATTERFAB_MONITOR_PORT", raising=False)
    assert cli_main.SERVICES == tuple(registry.SERVICES)
    assert stack_cli.SERVICES == [s.name for s in registry.SERVICES.values() if s.up]
    assert "station" not in stack_cli.SERVICES
    assert stack_cli.metrics_env("signer") == {"MATTERFAB_SIGNER_METRICS_PORT": "9402"}
    assert stack_cli.metrics_env("monitor") == {"MATTERFAB_MONITOR_PORT": "9400"}


def test_every_topic_has_a_producer_in_the_export() -> None:
    for topic in TOPIC_MESSAGES:
        assert export.producers(topic)
    assert export.producers(messages.ORDER_EVENTS) == "allocator, assembler"
    assert registry.consumers(IMAGES_READY) == ["assembler", "station"]
