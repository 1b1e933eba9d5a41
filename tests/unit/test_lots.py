"""The lot container: pieces back to back, a JSON index, a fixed footer (matterfab/lots.py).

Round trips for any pieces, bytes that depend on the pieces only (a redelivered lot rebuilds
the same object, which write-once storage accepts), and damage that always surfaces as an
IntegrityError naming the object and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab import lots
from matterfab.errors import IntegrityError

NAMES = ("dac.der", "qrcode.png", "onboarding.json")
RESERVED = ("index", "name", "offset", "size", "sha256")

meta_keys = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda k: k not in RESERVED
)
pieces_st = st.lists(
    st.builds(
        lots.Piece,
        index=st.integers(0, 999_999),
        name=st.sampled_from(NAMES),
        data=st.binary(max_size=300),
        meta=st.dictionaries(meta_keys, st.text(max_size=20), max_size=3),
    ),
    max_size=12,
).map(lambda ps: list({(p.index, p.name): p for p in ps}.values()))  # one piece per file


def piece(index: int, name: str = "dac.der", data: bytes | None = None, **meta: str) -> lots.Piece:
    return lots.Piece(index, name, f"piece {index} {name}".encode() if data is None else data, meta)


def framed(index_doc: bytes, pieces: bytes = b"abc") -> bytes:
    """A lot object with this index text (for damage the writer cannot make)."""
    return pieces + index_doc + lots.FOOTER_MAGIC + f"{len(index_doc):010d}\n".encode()


@given(pieces_st)
@settings(max_examples=200, deadline=None)
def test_pack_unpack_round_trip(pieces: list[lots.Piece]) -> None:
    body, entries = lots.pack(pieces)
    assert entries == lots.layout(pieces)
    lot = lots.unpack(body)
    assert lot.body == body
    assert list(lot.entries) == entries
    # Pieces lie back to back from offset 0: each one is a plain byte range of the object.
    assert body.startswith(b"".join(p.data for p in pieces))
    offset = 0
    for p, e in zip(pieces, lot.entries, strict=True):
        assert (e.index, e.name, e.offset, e.size) == (p.index, p.name, offset, len(p.data))
        assert e.sha256 == hashlib.sha256(p.data).hexdigest()
        assert e.meta == p.meta
        assert lot.piece(p.index, p.name) == p.data == body[e.offset : e.offset + e.size]
        offset += e.size


@given(pieces_st)
@settings(max_examples=100, deadline=None)
def test_bytes_depend_on_the_pieces_only(pieces: list[lots.Piece]) -> None:
    body, _ = lots.pack(pieces)
    # The same pieces again, their meta built in another order: the same object, byte for byte.
    again = [
        lots.Piece(p.index, p.name, bytes(p.data), dict(reversed(list(p.meta.items()))))
        for p in pieces
    ]
    assert lots.pack(again)[0] == body
    assert lots.pack(iter(pieces))[0] == body  # any iterable, consumed once
    index = body[len(body) - lots.FOOTER_LEN - int(body[-11:-1]) : -lots.FOOTER_LEN]
    assert index == json.dumps(json.loads(index), sort_keys=True, separators=(",", ":")).encode()


def test_the_layout_is_fixed() -> None:
    """Known answer: a change here changes every lot object, so redeliveries would alarm."""
    body, _ = lots.pack([piece(7, data=b"DER"), piece(7, "qrcode.png", b"PNG", x="1")])
    index = (
        b'{"entries":[{"index":7,"name":"dac.der","offset":0,"sha256":"'
        + hashlib.sha256(b"DER").hexdigest().encode()
        + b'","size":3},{"index":7,"name":"qrcode.png","offset":3,"sha256":"'
        + hashlib.sha256(b"PNG").hexdigest().encode()
        + b'","size":3,"x":"1"}]}'
    )
    assert body == b"DERPNG" + index + b"matterfab-lot/1 " + f"{len(index):010d}".encode() + b"\n"
    assert lots.FOOTER_LEN == 27


def test_an_empty_lot_round_trips() -> None:
    body, entries = lots.pack([])
    assert entries == []
    assert lots.unpack(body).entries == ()


@pytest.mark.parametrize("name", RESERVED)
def test_meta_may_not_set_an_index_field(name: str) -> None:
    with pytest.raises(ValueError, match=f"lot piece meta may not set \\['{name}'\\]"):
        lots.pack([lots.Piece(0, "dac.der", b"DER", {name: "1"})])


def test_meta_values_come_back_as_text() -> None:
    lot = lots.unpack(framed(b'{"entries":[{"index":0,"name":"n","offset":0,"size":3,'
                             b'"sha256":"x","n":5}]}'))  # fmt: skip
    assert lot.entries[0].meta == {"n": "5"}


def test_a_missing_piece_is_a_key_error() -> None:
    lot = lots.unpack(lots.pack([piece(3)])[0])
    with pytest.raises(KeyError, match=r"no qrcode\.png of device 3"):
        lot.piece(3, "qrcode.png")
    with pytest.raises(KeyError, match=r"no dac\.der of device 4"):
        lot.piece(4, "dac.der")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "orders/O/lots/0000000/dacs.lot: not a lot object (no footer)"),
        (b"short", "not a lot object (no footer)"),
        (b"x" * 40, "not a lot object (no footer)"),
        (b"DER" + b"matterfab-lot/2 0000000002\n", "not a lot object (no footer)"),
        (b"DER" + b"matterfab-lot/1 00000000x2\n", "bad footer"),
        (b"DER{}" + b"matterfab-lot/1 0000000099\n", "index length 99 exceeds the object"),
        (framed(b"not json"), "unreadable index"),
        (framed(b"[]"), "unreadable index"),
        (framed(b'{"pieces":[]}'), "unreadable index"),
        (framed(b'{"entries":"abc"}'), "unreadable index"),
        (framed(b'{"entries":[{"index":0,"name":"a","offset":0,"size":3}]}'), "unreadable index"),
        (
            framed(b'{"entries":[{"index":"x","name":"a","offset":0,"size":3,"sha256":"s"}]}'),
            "unreadable index",
        ),
        (
            framed(b'{"entries":[{"index":0,"name":"a","offset":1,"size":3,"sha256":"s"}]}'),
            "piece a of device 0 out of bounds",
        ),
        (
            framed(b'{"entries":[{"index":0,"name":"a","offset":-1,"size":1,"sha256":"s"}]}'),
            "piece a of device 0 out of bounds",
        ),
        (
            framed(b'{"entries":[{"index":0,"name":"a","offset":0,"size":-1,"sha256":"s"}]}'),
            "piece a of device 0 out of bounds",
        ),
    ],
    ids=[
        "empty",
        "short",
        "no-magic",
        "other-version",
        "footer-digits",
        "index-too-long",
        "index-not-json",
        "index-a-list",
        "no-entries",
        "entries-a-string",
        "entry-without-sha256",
        "entry-index-not-a-number",
        "piece-past-the-index",
        "negative-offset",
        "negative-size",
    ],
)
def test_damage_is_an_integrity_error_that_says_what(body: bytes, message: str) -> None:
    with pytest.raises(IntegrityError) as raised:
        lots.unpack(body, "orders/O/lots/0000000/dacs.lot")
    assert message in str(raised.value)
    assert str(raised.value).startswith("orders/O/lots/0000000/dacs.lot: ")


def test_a_truncated_lot_is_refused() -> None:
    body, _ = lots.pack([piece(0), piece(1)])
    for cut in (1, lots.FOOTER_LEN - 1, lots.FOOTER_LEN, len(body) - 1):
        with pytest.raises(IntegrityError, match="lot object: "):
            lots.unpack(body[:-cut])
    with pytest.raises(IntegrityError):
        lots.unpack(body[1:])  # the front cut off: the index's offsets now overrun it


@given(pieces_st.filter(lambda ps: any(p.data for p in ps)), st.data())
@settings(max_examples=200, deadline=None)
def test_a_flipped_byte_in_a_piece_is_caught_when_it_is_cut(
    pieces: list[lots.Piece], data: st.DataObject
) -> None:
    body, entries = lots.pack(pieces)
    at = data.draw(st.integers(0, sum(e.size for e in entries) - 1))
    damaged = bytearray(body)
    damaged[at] ^= data.draw(st.integers(1, 255))
    lot = lots.unpack(bytes(damaged))  # the index is intact...
    (hit,) = [e for e in lot.entries if e.offset <= at < e.offset + e.size]
    says = f"lot piece {hit.name} of device {hit.index}: sha256 differs"
    with pytest.raises(IntegrityError, match=re.escape(says)):
        lot.cut(hit)  # ...the piece is not
    for e in lot.entries:
        if e is not hit:
            assert lot.cut(e) == body[e.offset : e.offset + e.size]  # the others are intact


@given(pieces_st, st.data())
@settings(max_examples=300, deadline=None)
def test_any_damage_to_index_or_footer_is_refused_or_harmless(
    pieces: list[lots.Piece], data: st.DataObject
) -> None:
    """A flipped byte after the pieces never raises anything but IntegrityError; when the lot
    still parses, every piece it names is cut from inside the object or refused by its digest."""
    body, entries = lots.pack(pieces)
    start = sum(e.size for e in entries)
    at = data.draw(st.integers(start, len(body) - 1))
    damaged = bytearray(body)
    damaged[at] ^= data.draw(st.integers(1, 255))
    try:
        lot = lots.unpack(bytes(damaged))
    except IntegrityError:
        return
    for e in lot.entries:
        assert 0 <= e.offset and e.offset + e.size <= len(damaged) - lots.FOOTER_LEN
        try:
            assert hashlib.sha256(lot.cut(e)).hexdigest() == e.sha256
        except IntegrityError:
            pass


@pytest.mark.parametrize("offset", ["1e999", "0.7", "true", '"12"', "null"])
def test_a_position_that_is_not_a_json_integer_is_an_integrity_error(offset: str) -> None:
    doc = b'{"entries":[{"index":0,"name":"a","offset":%s,"size":3,"sha256":"s"}]}' % (
        offset.encode()
    )
    with pytest.raises(IntegrityError, match="unreadable index"):
        lots.unpack(framed(doc))


def test_lots_imports_on_its_own() -> None:
    """The message package imports lots (MAX_DEVICES): lots must not need it at import time."""
    done = subprocess.run(
        [sys.executable, "-c", "import matterfab.lots"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-500:]


def test_lot_keys_ranges_and_sizes() -> None:
    assert lots.lot_key("WO-1", 42, lots.DACS) == "orders/WO-1/lots/0000042/dacs.lot"
    assert lots.lot_key("WO-1", 0, lots.LABELS) == "orders/WO-1/lots/0000000/labels.lot"
    assert [list(r) for r in lots.lot_ranges(10, 15, 2)] == [[10, 11], [12, 13], [14]]
    assert list(lots.lot_ranges(5, 5, 3)) == []
    assert lots.lot_size(10_000) == lots.MAX_DEVICES  # ~0.9 s of build work at 10,000
    assert lots.lot_size(20_000) == 178  # ~1 s
    assert lots.lot_size(1_000) == lots.MAX_DEVICES
    assert lots.lot_size(100_000) == 46
    assert lots.lot_size(10_000, target_s=0.0) == 1
    # An order is at least LOTS_PER_ORDER lots, each of MIN_SPLIT devices or more.
    assert [lots.lot_size(10_000, quantity=q) for q in (1, 32, 129, 200, 1000, 5000)] == [
        32,
        32,
        33,
        50,
        250,
        256,
    ]
    assert lots.lot_size(100_000, quantity=1000) == 46  # the work bound is smaller
    assert lots.lot_size(10_000, max_devices=20, quantity=200) == 20  # so is the setting


@given(st.integers(1000, 100_000), st.integers(0, 10_000), st.integers(1, 5_000))
def test_lots_cover_a_chunk_exactly_once(iterations: int, start: int, count: int) -> None:
    size = lots.lot_size(iterations, quantity=count)
    assert 1 <= size <= lots.MAX_DEVICES
    assert size >= min(lots.MIN_SPLIT, lots.lot_size(iterations))
    assert -(-count // size) >= min(lots.LOTS_PER_ORDER, -(-count // lots.MIN_SPLIT))
    ranges = list(lots.lot_ranges(start, start + count, size))
    assert [i for r in ranges for i in r] == list(range(start, start + count))
    assert all(len(r) == size for r in ranges[:-1]) and 0 < len(ranges[-1]) <= size
