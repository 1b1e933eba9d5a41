"""The committed schemas of the bucket's objects (`schemas/bucket/`) match the models, and the
catalogue of stored objects names a key function and a model for each."""

from __future__ import annotations

import json
from pathlib import Path

from matterfab.bucket import catalog, keys
from tests.vectors_path import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas" / "bucket"


def test_committed_bucket_schemas_match_the_models() -> None:
    expected = catalog.render()
    committed = {p.name: p.read_text() for p in SCHEMAS.iterdir() if p.is_file()}
    assert set(committed) == set(expected), "run `make schemas` and commit the result"
    for name, text in expected.items():
        assert committed[name] == text, f"schemas/bucket/{name} drifted: run `make schemas`"


def test_every_stored_object_has_a_key_function_and_an_object_schema() -> None:
    names = [o.name for o in catalog.stored_objects()]
    assert len(names) == len(set(names))
    for obj in catalog.stored_objects():
        assert callable(getattr(keys, obj.key_function)), obj.name
        schema = json.loads((SCHEMAS / f"{obj.name}.schema.json").read_text())
        if "$ref" in schema:  # a message stored as sent: its schema beside the messages'
            assert (SCHEMAS / schema["$ref"]).resolve().is_file(), obj.name
            continue
        assert schema["type"] in {"object", "array"}, obj.name
        assert obj.key.split("/")[0] in schema["$comment"], obj.name


def test_the_export_command_writes_the_bucket_schemas(tmp_path: Path) -> None:
    from matterfab.messages.export import main

    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "bucket" / "ready-chunk.schema.json").is_file()
    assert (tmp_path / "work-order.v1.schema.json").is_file()


def test_the_objects_doc_names_every_stored_object() -> None:
    doc = (REPO_ROOT / "docs" / "objects-and-messages.md").read_text()
    for obj in catalog.stored_objects():
        assert f"`{obj.key_function}`" in doc, obj.name
        assert f"schemas/bucket/{obj.name}.schema.json" in doc, obj.name
