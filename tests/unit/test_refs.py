"""RefReader: a ref is a whole object or one device's piece of a lot object (matterfab/refs.py).

Every read is checked against the ref's size and sha256, and a lot object is fetched once for
all the pieces read from it, however many readers ask for it at the same time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import pytest

from matterfab import lots
from matterfab.errors import IntegrityError
from matterfab.messages.base import ObjectRef
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader


class SlowStore(MemoryObjectStore):
    """The in-memory store, with a GET that takes a while: readers overlap as on real S3."""

    async def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        await asyncio.sleep(0.01)
        return await super().get_with_metadata(key)


def whole_ref(key: str, data: bytes) -> ObjectRef:
    return ObjectRef(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def put_lot(store: MemoryObjectStore, first: int, count: int) -> dict[int, ObjectRef]:
    """A labels lot of `count` devices from `first`: index -> the ref of its qrcode.png."""
    pieces = [
        lots.Piece(i, "qrcode.png", f"PNG of {i}".encode() * (i + 1))
        for i in range(first, first + count)
    ]
    body, entries = lots.pack(pieces)
    key = lots.lot_key("O", first, lots.LABELS)
    store.objects[key] = body  # straight in: only the reads are counted
    return {
        e.index: ObjectRef(key=key, sha256=e.sha256, size=e.size, offset=e.offset) for e in entries
    }


async def test_a_whole_object_is_read_and_checked() -> None:
    store = MemoryObjectStore()
    store.objects["orders/O/devices/0000000/partition.bin"] = b"NVS image"
    reader = RefReader(store)
    ref = whole_ref("orders/O/devices/0000000/partition.bin", b"NVS image")
    assert await reader.read(ref) == b"NVS image"
    assert await reader.read(ref.model_dump()) == b"NVS image"  # a ref from a manifest
    assert await reader.read(ref.model_dump(exclude_none=True)) == b"NVS image"
    assert store.requests == 3  # whole objects are not kept: each read is one GET


async def test_a_piece_is_cut_out_of_its_lot() -> None:
    store = MemoryObjectStore()
    refs = put_lot(store, 0, 5)
    reader = RefReader(store)
    for index, ref in refs.items():
        assert await reader.read(ref) == f"PNG of {index}".encode() * (index + 1)
        assert await reader.read(ref.model_dump(exclude_none=True)) == await reader.read(ref)
    assert store.requests == 1


async def test_concurrent_readers_of_a_lot_share_one_get() -> None:
    store = SlowStore()
    refs = {
        **put_lot(store, 0, 21),
        **put_lot(store, 21, 21),
        **put_lot(store, 42, 3),
    }
    reader = RefReader(store)
    order = [i for _ in range(3) for i in refs]  # every piece three times, all at once
    got = await asyncio.gather(*(reader.read(refs[i]) for i in order))
    assert got == [f"PNG of {i}".encode() * (i + 1) for i in order]
    assert store.requests == 3  # one GET per lot object


async def test_the_last_lots_are_kept_and_the_oldest_dropped() -> None:
    store = MemoryObjectStore()
    a, b, c = (put_lot(store, first, 2) for first in (0, 2, 4))
    reader = RefReader(store, keep=2)
    for ref in (a[0], b[2], a[1], c[4], a[0]):  # A is used again before C comes: B goes
        await reader.read(ref)
    assert store.requests == 3
    await reader.read(b[3])
    assert store.requests == 4


async def test_lots_kept_stay_within_a_byte_budget() -> None:
    """Lots of partitions (images.lot) are large: the reader keeps what fits in keep_bytes,
    always at least the lot in hand."""
    store = MemoryObjectStore()
    a, b = (put_lot(store, first, 2) for first in (0, 2))
    size = len(store.objects[a[0].key])
    reader = RefReader(store, keep=64, keep_bytes=size + 1)  # room for one lot only
    for ref in (a[0], a[1], b[2], b[3], a[0]):
        await reader.read(ref)
    assert store.requests == 3  # A, B (A dropped), A again
    small = RefReader(store, keep_bytes=1)  # too small for any: still reads each piece
    assert await small.read(a[1]) == await reader.read(a[1])


@pytest.mark.parametrize("change", ["sha256", "size", "offset"])
async def test_a_ref_that_does_not_match_its_piece_is_an_integrity_error(change: str) -> None:
    store = MemoryObjectStore()
    ref = put_lot(store, 0, 3)[1]
    assert ref.offset is not None
    changes: dict[str, dict[str, Any]] = {
        "sha256": {"sha256": "0" * 64},
        "size": {"size": ref.size - 1},
        "offset": {"offset": ref.offset + 1},
    }
    bad = ref.model_copy(update=changes[change])
    where = f"{ref.key} bytes {bad.offset}+{bad.size}: sha256 does not match its ref"
    with pytest.raises(IntegrityError, match=re.escape(where)):
        await RefReader(store).read(bad)


async def test_a_ref_past_the_end_of_its_lot_is_an_integrity_error() -> None:
    store = MemoryObjectStore()
    ref = put_lot(store, 0, 1)[0]
    past = ref.model_copy(update={"offset": len(store.objects[ref.key]) - 2})
    with pytest.raises(IntegrityError, match="sha256 does not match its ref"):
        await RefReader(store).read(past)


async def test_a_damaged_lot_or_whole_object_is_an_integrity_error() -> None:
    store = MemoryObjectStore()
    refs = put_lot(store, 0, 2)
    body = bytearray(store.objects[refs[1].key])
    assert refs[1].offset is not None
    body[refs[1].offset] ^= 0xFF
    store.objects[refs[1].key] = bytes(body)
    reader = RefReader(store)
    assert await reader.read(refs[0]) == b"PNG of 0"  # its neighbour is intact
    with pytest.raises(IntegrityError, match="sha256 does not match its ref"):
        await reader.read(refs[1])
    store.objects["orders/O/manifest.csv"] = b"index,device_id\n"
    with pytest.raises(IntegrityError, match=re.escape("orders/O/manifest.csv: sha256")):
        await reader.read(whole_ref("orders/O/manifest.csv", b"index,device_id,serial\n"))


async def test_a_missing_lot_fails_every_waiter_and_is_asked_for_again() -> None:
    store = SlowStore()
    ref = ObjectRef(key=lots.lot_key("O", 0, lots.DACS), sha256="0" * 64, size=3, offset=0)
    reader = RefReader(store)
    results = await asyncio.gather(*(reader.read(ref) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, KeyError) for r in results)
    assert store.requests == 1  # the waiters shared the failed GET...
    store.objects[ref.key] = lots.pack([lots.Piece(0, "dac.der", b"DER")])[0]
    good = ref.model_copy(update={"sha256": hashlib.sha256(b"DER").hexdigest()})
    assert await reader.read(good) == b"DER"  # ...and the failure was not kept
    assert store.requests == 2
