"""Matter TLV: known answers from the spec's Appendix A examples, round trips, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.matter import tlv
from matterfab.matter.tlv import MISSING, Array, Structure, TlvList, UInt

# (value, tag, encoding): Matter Core Specification Appendix A.12 "TLV Encoding Examples".
KNOWN_ANSWERS: list[tuple[tlv.Value, int | None, str]] = [
    (False, None, "08"),
    (True, None, "09"),
    (42, None, "002a"),
    (-17, None, "00ef"),
    (UInt(42), None, "042a"),
    (422, None, "01a601"),
    (UInt(40000), None, "05409c"),
    (-170000, None, "02f067fdff"),
    (UInt(40000000000), None, "0700902f5009000000"),
    ("Hello!", None, "0c0648656c6c6f21"),
    ("Sunt în culpă.", None, "0c1053756e7420c3ae6e2063756c70c4832e"),
    (bytes(range(5)), None, "10050001020304"),
    (None, None, "14"),
    (Structure(()), None, "1518"),
    (Array(()), None, "1618"),
    (TlvList(()), None, "1718"),
    (UInt(42), 1, "24012a"),
    (
        Structure(((0, 42), (1, -17))),
        None,
        "1520002a2001ef18",
    ),
    (Array((0, 1, 2, 3, 4)), None, "160000000100020003000418"),
    (TlvList(((None, 1), (0, UInt(2)))), None, "17000124000218"),
]


@pytest.mark.parametrize(("value", "tag", "hex_encoding"), KNOWN_ANSWERS)
def test_known_answers(value: tlv.Value, tag: int | None, hex_encoding: str) -> None:
    assert tlv.encode(value, tag).hex() == hex_encoding
    if tag is None:
        assert tlv.decode(bytes.fromhex(hex_encoding)) == value


def test_decoder_accepts_any_integer_width() -> None:
    # An 8-octet unsigned 1 is legal TLV even though the writer would use one octet.
    assert tlv.decode(bytes.fromhex("070100000000000000")) == UInt(1)
    assert tlv.decode(bytes.fromhex("03ffffffffffffffff")) == -1


def test_structure_get() -> None:
    s = Structure(((0, UInt(1)), (3, "x")))
    assert s.get(3) == "x"
    assert s.get(1) is MISSING


_scalars = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1).map(UInt),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=300),
    st.binary(max_size=300),
)


def _containers(children: st.SearchStrategy[tlv.Value]) -> st.SearchStrategy[tlv.Value]:
    tagged = st.dictionaries(st.integers(0, 255), children, max_size=6)
    return st.one_of(
        tagged.map(lambda d: Structure(tuple(d.items()))),
        st.lists(children, max_size=6).map(lambda items: Array(tuple(items))),
        st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 255)), children), max_size=6).map(
            lambda members: TlvList(tuple(members))
        ),
    )


_values = st.recursive(_scalars, _containers, max_leaves=25)


@given(_values)
def test_round_trip(value: tlv.Value) -> None:
    encoded = tlv.encode(value)
    assert tlv.decode(encoded) == value
    # The writer is canonical: re-encoding what it decoded gives the same bytes.
    assert tlv.encode(tlv.decode(encoded)) == encoded


@given(st.binary(max_size=64))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    try:
        tlv.decode(data)
    except InvalidInput as exc:
        assert exc.field == "tlv"


@pytest.mark.parametrize(
    ("hex_data", "rule"),
    [
        ("", "truncated"),
        ("05ff", "truncated"),
        ("0c05414243", "truncated"),
        ("15", "end-of-container"),
        ("0401ff", "trailing"),
        ("0a0000803f", "floating point"),
        ("44000001", "tag form"),
        ("2401", "truncated"),
        ("240001", "anonymous"),
        ("0c02c328", "UTF-8"),
        ("1524000124000218", "distinct"),
        ("1624000118", "anonymous"),
        ("150001" + "18", "distinct"),
        ("19", "element type"),
        ("16" * 40, "nesting"),
    ],
)
def test_bad_input_names_the_rule(hex_data: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as info:
        tlv.decode(bytes.fromhex(hex_data))
    assert info.value.field == "tlv"
    assert rule in str(info.value)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (UInt(2**64), "64 bits"),
        (UInt(-1), ">= 0"),
        (2**63, "64 bits"),
        (Structure(((1, 1), (1, 2))), "distinct"),
        (Structure(((None, 1),)), "distinct"),
        (1.5, "cannot encode"),
    ],
)
def test_unencodable_values(value: object, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        tlv.encode(value)


def test_context_tag_range() -> None:
    with pytest.raises(InvalidInput, match="context tag"):
        tlv.encode(UInt(1), 256)
