"""`codec.dumps_indented` writes what `json.dumps(sort_keys=True, indent=1)` writes, byte for byte.

Write-once objects (each device's `onboarding.json` in `labels.lot`) are rebuilt on a
redelivery and must come out identical, so the faster encoder has to equal the standard one
on every document, not only on the records seen so far.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.messages import ObjectRef
from matterfab.messages.base import Sealing
from matterfab.messages.codec import dumps_indented
from tests.unit.test_onboarding_record import record

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(codec="utf-8"))
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=6),
    max_leaves=40,
)


def standard(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, indent=1)


@settings(max_examples=600)
@given(DOCS)
def test_equal_to_json_dumps_on_generated_documents(doc: Any) -> None:
    assert dumps_indented(doc) == standard(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        [],
        {"": ""},
        {"a": {}, "b": [], "c": [{}], "d": [[]]},
        {"z": 1, "a": 2, "m": {"y": [1, 2.5, None, True, False]}},
        '\u00e9\u2028\ud83d\ude00\x00"\\/',
        [math.inf, -math.inf, math.nan, -0.0, 1e300, 5e-324],
        {"deep": [[[[{"k": [[["v"]]]}]]]]},
    ],
)
def test_equal_to_json_dumps_on_edge_cases(doc: Any) -> None:
    assert dumps_indented(doc) == standard(doc)


def test_equal_to_json_dumps_on_onboarding_records() -> None:
    sealed = ObjectRef(
        key="orders/O-1/lots/0000000/images.lot",
        sha256="d" * 64,
        size=2711,
        offset=123_456,
        sealed=Sealing(line="local", key="e" * 64, sha256="f" * 64, size=24576),
    )
    for rec in (record(), record(nvs_keys=sealed), record(dac=sealed, secure_cert=sealed)):
        doc = rec.to_doc()
        assert dumps_indented(doc) == standard(doc)
        assert rec.to_json() == standard(doc).encode()


@pytest.mark.parametrize("bad", [{1: "int key"}, {"a": b"bytes"}, {"s": {1, 2}}, object()])
def test_refuses_what_json_cannot_hold(bad: Any) -> None:
    with pytest.raises(TypeError):
        dumps_indented(bad)
