"""The committed JSON Schemas and AsyncAPI document match the models; the example order is valid."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from matterfab.messages import TOPIC_MESSAGES, WorkOrder, decode
from matterfab.messages.export import render
from tests.vectors_path import REPO_ROOT, vectors_dir

SCHEMAS = REPO_ROOT / "schemas"


def test_committed_schemas_match_the_models() -> None:
    expected = render()
    committed = {p.name: p.read_text() for p in SCHEMAS.iterdir() if p.is_file()}
    assert set(committed) == set(expected), "run `make schemas` and commit the result"
    for name, text in expected.items():
        assert committed[name] == text, f"schemas/{name} drifted: run `make schemas`"


def test_every_topic_has_a_versioned_schema() -> None:
    for topic, model in TOPIC_MESSAGES.items():
        schema = json.loads(
            (
                SCHEMAS / f"{model.model_fields['type'].default.replace('/', '.')}.schema.json"
            ).read_text()
        )
        assert schema["properties"]["type"]["const"].endswith("/v1"), topic


def test_asyncapi_names_every_topic() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == set(TOPIC_MESSAGES)
    for message in doc["components"]["messages"].values():
        assert (SCHEMAS / message["payload"]["$ref"].removeprefix("./")).is_file()


def test_the_shared_example_work_order_is_valid() -> None:
    raw = (vectors_dir().parent / "examples" / "work-order.json").read_bytes()
    order = decode(raw, WorkOrder)
    assert order.quantity == 3
    assert order.serial_for(0) == "A19-00100001"
    assert order.product.product_finish == "matte"


def test_schema_file_names(tmp_path: Path) -> None:
    from matterfab.messages.export import main

    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "work-order.v1.schema.json").is_file()
