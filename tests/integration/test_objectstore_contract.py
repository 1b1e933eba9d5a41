"""One set of object-store checks, run on the real S3 server and on the in-memory store.

The in-memory store (`matterfab.objectstore.MemoryObjectStore`) backs the fast handler tests;
these checks keep its semantics those of the real one: write-once, redelivery answers,
metadata round trip, prefix listing, not-found behaviour.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from matterfab.errors import IntegrityError
from matterfab.objectstore import MemoryObjectStore, Store
from matterfab.s3 import ObjectStore, StoredObject


@pytest.fixture(params=["s3", "memory"])
def any_store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryObjectStore()
    store: Store = request.getfixturevalue("store")  # the session's real S3 store
    return store


def fresh(name: str) -> str:
    return f"test/contract/{uuid.uuid4().hex}/{name}"


def test_both_stores_satisfy_the_protocol() -> None:
    assert isinstance(MemoryObjectStore(), Store)
    assert all(hasattr(ObjectStore, m) for m in Store.__dict__ if not m.startswith("_"))


async def test_put_once_then_same_bytes_then_other_bytes(any_store: Store) -> None:
    key = fresh("a.bin")
    digest = hashlib.sha256(b"one").hexdigest()
    assert await any_store.put_once(key, b"one") == StoredObject(key, digest, 3, created=True)
    assert await any_store.put_once(key, b"one") == StoredObject(key, digest, 3, created=False)
    with pytest.raises(IntegrityError, match="different content"):
        await any_store.put_once(key, b"two")
    assert await any_store.get(key) == b"one"


async def test_concurrent_writers_one_winner(any_store: Store) -> None:
    key = fresh("race")
    results = await asyncio.gather(*(any_store.put_once(key, b"same") for _ in range(6)))
    assert sum(r.created for r in results) == 1


async def test_metadata_kept_and_never_overwritten(any_store: Store) -> None:
    key = fresh("dac.der")
    meta = {"dac-key-wrapped": "AAEC", "issued-at": "2026-11-29T08:00:00+00:00"}
    assert await any_store.put_if_absent(key, b"first", "application/pkix-cert", meta)
    assert not await any_store.put_if_absent(key, b"second", "application/pkix-cert", {"x": "y"})
    assert await any_store.get_with_metadata(key) == (b"first", meta)


async def test_absent_objects(any_store: Store) -> None:
    key = fresh("absent")
    assert await any_store.get_or_none(key) is None
    assert await any_store.get_with_metadata(key) is None
    assert not await any_store.exists(key)
    with pytest.raises(KeyError):
        await any_store.get(key)
    await any_store.delete(key)  # no error


async def test_put_overwrites_and_list_is_a_sorted_prefix(any_store: Store) -> None:
    base = fresh("")
    for name in ("b/2", "a/1", "a/10", "c"):
        await any_store.put(base + name, name.encode())
    await any_store.put(base + "a/1", b"replaced")
    assert await any_store.get(base + "a/1") == b"replaced"
    assert await any_store.list_keys(base + "a/1") == [base + "a/1", base + "a/10"]
    assert await any_store.list_keys(base) == [base + n for n in ("a/1", "a/10", "b/2", "c")]
    await any_store.delete(base + "c")
    assert not await any_store.exists(base + "c")


async def test_get_range_reads_exactly_the_bytes_asked(any_store: Store) -> None:
    key = fresh("images.lot")
    body = bytes(range(256)) * 40
    await any_store.put_once(key, body)
    assert await any_store.get_range(key, 0, 10) == body[:10]
    assert await any_store.get_range(key, 1000, 2048) == body[1000:3048]
    assert await any_store.get_range(key, len(body) - 5, 5) == body[-5:]
    assert await any_store.get_range(fresh("absent"), 0, 10) is None


async def test_get_range_past_the_end_comes_back_short(any_store: Store) -> None:
    """A ref pointing past its object's end: short bytes at once (the digest check names it),
    never a retry until the deadline."""
    key = fresh("short.lot")
    await any_store.put_once(key, b"0123456789")
    assert await any_store.get_range(key, 6, 10) in (b"6789", b"")
    assert await any_store.get_range(key, 20, 10) == b""
