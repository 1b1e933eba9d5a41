"""ObjectStore against the real S3 server of the local stack."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import statistics
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from matterfab.config import S3Settings
from matterfab.errors import IntegrityError, StackError
from matterfab.s3 import AccessDenied, ObjectStore, StoredObject
from matterfab.stack import LocalStack, StackPorts


def unique(prefix: str) -> str:
    return f"test/{prefix}/{uuid.uuid4().hex}"


def expected(key: str, data: bytes, created: bool) -> StoredObject:
    return StoredObject(key, hashlib.sha256(data).hexdigest(), len(data), created)


async def test_put_get_roundtrip(store: ObjectStore) -> None:
    key = unique("roundtrip") + "/blob.bin"
    data = os.urandom(70_000)
    stored = await store.put(key, data)
    assert stored == expected(key, data, created=True)
    assert await store.get(key) == data
    assert await store.exists(key)
    replaced = os.urandom(10)
    await store.put(key, replaced)  # plain put overwrites: for mutable objects only
    assert await store.get(key) == replaced


async def test_missing_object(store: ObjectStore) -> None:
    key = unique("missing")
    with pytest.raises(KeyError) as info:
        await store.get(key)
    assert info.value.args == (key,)
    assert await store.get_or_none(key) is None
    assert not await store.exists(key)


async def test_put_once_same_bytes_is_noop(store: ObjectStore) -> None:
    key = unique("once") + "/partition.bin"
    data = os.urandom(24_576)
    first = await store.put_once(key, data)
    again = await store.put_once(key, data)
    assert first == expected(key, data, created=True)
    assert again == expected(key, data, created=False)
    assert await store.get(key) == data


async def test_put_once_different_bytes_is_integrity_error(store: ObjectStore) -> None:
    key = unique("once") + "/dac.der"
    await store.put_once(key, b"original")
    with pytest.raises(IntegrityError, match=key):
        await store.put_once(key, b"tampered")
    assert await store.get(key) == b"original"  # never overwritten


async def test_put_once_concurrent_writers_one_winner(store: ObjectStore) -> None:
    key = unique("race")
    results = await asyncio.gather(*(store.put_once(key, b"same") for _ in range(8)))
    assert sum(r.created for r in results) == 1


async def test_put_if_absent_keeps_metadata_and_never_overwrites(store: ObjectStore) -> None:
    key = unique("meta") + "/dac.der"
    meta = {"dac-key-wrapped": "AAEC", "issued-at": "2026-11-21T08:00:00+00:00"}
    assert await store.put_if_absent(key, b"first", "application/pkix-cert", meta)
    assert not await store.put_if_absent(key, b"second", "application/pkix-cert", {"x": "y"})
    assert await store.get_with_metadata(key) == (b"first", meta)
    assert await store.get_with_metadata(unique("meta") + "/absent") is None


async def test_list_keys_paginates(store: ObjectStore) -> None:
    prefix = unique("list") + "/"
    keys = [f"{prefix}{i:07d}" for i in range(1010)]  # S3 pages hold at most 1000 keys
    sem = asyncio.Semaphore(50)

    async def put(key: str) -> None:
        async with sem:
            await store.put_once(key, key.encode())

    await asyncio.gather(*(put(k) for k in keys))
    assert await store.list_keys(prefix) == keys
    # Prefix "000001" covers 0000010..0000019 only (a prefix, not a range).
    assert await store.list_keys(prefix + "000001") == [f"{prefix}{i:07d}" for i in range(10, 20)]
    assert await store.list_keys(unique("empty")) == []


async def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    await store.ensure_bucket()
    await store.ensure_bucket()


async def test_wrong_secret_is_rejected(store: ObjectStore, s3_settings: S3Settings) -> None:
    key = unique("auth")
    await store.put_once(key, b"secret data")
    wrong = s3_settings.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    async with ObjectStore.open(wrong) as intruder:
        with pytest.raises(AccessDenied, match="refused") as put_error:
            await intruder.put(unique("auth"), b"x")
        assert "403" in str(put_error.value)
        with pytest.raises(AccessDenied, match="refused"):
            await intruder.get(key)
        with pytest.raises(AccessDenied, match="refused"):
            await intruder.list_keys("test/")
    # And no credentials at all: the store is not open to anyone.
    url = f"{s3_settings.endpoint}/{s3_settings.bucket}/{key}"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
    assert anonymous.value.code == 403


async def test_unreachable_store_retries_then_fails(s3_settings: S3Settings) -> None:
    closed = StackPorts.free().s3  # nothing listens there
    settings = s3_settings.model_copy(
        update={"endpoint": f"http://127.0.0.1:{closed}", "retry_deadline_s": 1.0}
    )
    began = time.monotonic()
    async with ObjectStore.open(settings) as unreachable:
        with pytest.raises(StackError, match="unreachable"):
            await unreachable.get("anything")
    assert 0.5 < time.monotonic() - began < 10


async def test_put_once_rides_out_a_store_outage(tmp_path: Path) -> None:
    """A write issued while S3 is down completes once the store is back."""
    local = LocalStack(tmp_path / "stack", ports=StackPorts.free())
    local.start()
    try:
        async with ObjectStore.open(local.s3_settings()) as outage_store:
            await outage_store.put_once("before", b"1")
            pid = local.status()["s3"]["pid"]
            os.kill(pid, signal.SIGTERM)
            while local.status()["s3"]["pid"] is not None:
                await asyncio.sleep(0.1)
            write = asyncio.create_task(outage_store.put_once("during", b"2"))
            await asyncio.sleep(3)
            assert not write.done()
            await asyncio.to_thread(local.start)  # restarts only what is down
            stored = await asyncio.wait_for(write, 60)
            assert stored.created
            assert await outage_store.get("before") == b"1"
            assert await outage_store.get("during") == b"2"
    finally:
        local.stop()


async def test_put_once_latency(store: ObjectStore) -> None:
    """200 sequential small write-once puts: report p50, and keep it well under 50 ms."""
    prefix = unique("latency")
    timings = []
    for i in range(200):
        began = time.perf_counter()
        await store.put_once(f"{prefix}/{i:07d}", os.urandom(512))
        timings.append(time.perf_counter() - began)
    p50 = statistics.median(timings) * 1000
    p99 = sorted(timings)[int(len(timings) * 0.99) - 1] * 1000
    print(f"\nput_once latency over 200 puts: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert p50 < 50
