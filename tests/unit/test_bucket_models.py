"""The bucket's models write the exact bytes the pipeline wrote before them, and read them back.

Each stored object is built here the old way (the dict and `json.dumps` call its writer used,
copied from the code before the bucket had models) and compared with the model's bytes: a
write-once object rewritten on a redelivery must be byte-identical, or `put_once` raises an
integrity alarm. Then the handlers that write them, on the in-memory store.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from matterfab.bucket import keys, objects
from matterfab.bucket.models import (
    AllocationChunk,
    BatchDac,
    ClaimRecord,
    DacChoice,
    Emitted,
    ImportBatch,
    ImportedDac,
    MacClaim,
    Manifest,
    OrderClaim,
    PoolClaim,
    ProfileSummary,
    ReadyChunk,
)
from matterfab.messages import WorkOrder, decode
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.allocator import allocation
from matterfab.services.assembler import manifest
from matterfab.services.assembler.service import record_of
from tests.unit.test_manifest import lot_of_images, record
from tests.vectors_path import vectors_dir


def example_order(**changes: Any) -> WorkOrder:
    raw = json.loads((vectors_dir().parent / "examples" / "work-order.json").read_bytes())
    raw.update(changes)
    return decode(json.dumps(raw).encode(), WorkOrder)


def old_claim_bytes(d: dict[str, Any]) -> bytes:
    """allocation.Claim.to_json before the bucket: four fields, then lot_size/line_key if set."""
    out = {k: d[k] for k in ("order_id", "serial_start", "serial_count", "discriminator_start")}
    for k in ("lot_size", "line_key"):
        if d.get(k) is not None:
            out[k] = d[k]
    return json.dumps(out).encode()


@pytest.mark.parametrize(
    "doc",
    [
        {"order_id": "A", "serial_start": 1, "serial_count": 4, "discriminator_start": 7},
        {"order_id": "A", "serial_start": 1, "serial_count": 0, "discriminator_start": 7,
         "lot_size": 16},
        {"order_id": "A", "serial_start": 9, "serial_count": 2, "discriminator_start": 0,
         "lot_size": 64, "line_key": "ab" * 8},
    ],
)  # fmt: skip
def test_claim_json_bytes_and_old_claims(doc: dict[str, Any]) -> None:
    old = old_claim_bytes(doc)
    claim = OrderClaim.from_bytes(old)
    assert claim.to_bytes() == old
    assert OrderClaim(**doc).to_bytes() == old
    # positional, as the allocator and its tests build it
    assert OrderClaim(*doc.values()) == claim
    assert claim.lot_size == doc.get("lot_size")


def test_a_claim_before_lots_takes_the_default_lot_size() -> None:
    order = example_order()
    claim = OrderClaim("A", 1, 1, 0)
    assert claim.lot_size_of(order) == allocation.lots.lot_size(order.commissioning.iteration_count)
    assert OrderClaim("A", 1, 1, 0, 5).lot_size_of(order) == 5


def test_chain_records_new_and_from_before_the_registry() -> None:
    record_ = {
        "order_id": "A",
        "order_sha256": "c" * 64,
        "serial_start": 1,
        "serial_count": 0,
        "discriminator_start": 100,
        "devices": 3,
        "serials": [["SC-", 4, 1, 3]],
        "rd_id_uids": ["00" * 16],
    }
    old = json.dumps(record_, sort_keys=True, separators=(",", ":")).encode()
    assert ClaimRecord.model_validate(record_).to_bytes() == old
    assert ClaimRecord.from_bytes(old).to_doc() == record_
    before = {"order_id": "B", "serial_start": 4, "serial_count": 2, "discriminator_start": 3}
    old = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    parsed = ClaimRecord.from_bytes(old)
    assert parsed.to_doc() == before  # no registry fields appear in an old record
    assert parsed.serials is None and parsed.to_bytes() == old


@pytest.mark.parametrize("encryption", ["none", "xts"])
def test_allocation_chunks_are_byte_identical(encryption: str) -> None:
    order = example_order(partition={"size": 24576, "encryption": encryption})
    devices = allocation.allocate_chunk(
        order, OrderClaim(order.order_id, 1, 3, 7, 1), 0, lambda dev_id: f"wrapped:{dev_id}"
    )
    old = json.dumps(devices).encode()  # the allocator's chunk before the bucket
    chunk = AllocationChunk.of(devices)
    assert chunk.to_bytes() == old
    assert AllocationChunk.from_bytes(old).to_docs() == devices
    assert ("nvs_keys_wrapped" in devices[0]) == (encryption == "xts")


def test_ready_chunks_hold_the_assemblers_entries_as_they_were() -> None:
    _, _, images = lot_of_images("RC-1", 4, 0, 4)
    entries = [record_of(m) for m in images]
    entries[1]["qrcode_png_b64"] = "UE5H"  # as builders before lots sent them
    old = json.dumps({"order_id": "RC-1", "records": entries}, sort_keys=True).encode()
    chunk = ReadyChunk.of("RC-1", entries)
    assert chunk.to_bytes() == old
    assert ReadyChunk.encode("RC-1", entries) == old  # the assembler's path, no model between
    for bad in (-1, "3", None, True):
        with pytest.raises(ValueError, match=r"records\[0\]\.index"):
            ReadyChunk.encode("RC-1", [{**entries[0], "index": bad}])
    parsed = ReadyChunk.from_bytes(old)
    assert parsed.indices() == {0, 1, 2, 3}
    assert [r.to_doc() for r in parsed.records] == entries
    with pytest.raises(ValidationError):
        ReadyChunk.from_bytes(b'{"order_id": "X", "records": [{"serial_num": "no index"}]}')


def test_emitted_keeps_partition_order_and_reads_int_partitions() -> None:
    ends = {0: 5, 2: 7, 10: 1}
    old = json.dumps({"topic": "mfg.devices.allocated", "ends": ends}, sort_keys=True).encode()
    emitted = Emitted(topic="mfg.devices.allocated", ends=ends)
    assert emitted.to_bytes() == old
    assert Emitted.from_bytes(old).ends == ends


def test_mac_claims_pool_objects_and_profiles_are_byte_identical() -> None:
    mac = {"mac": "02:00:00:00:00:01", "device_id": "O/0000001"}
    assert MacClaim(**mac).to_bytes() == json.dumps(mac).encode()
    batch = {
        "batch": "b1",
        "profile": "p",
        "count": 1,
        "imported_at": "2026-12-07T16:00:00+00:00",
        "dacs": [{"fingerprint": "f" * 64, "name": "dacs.pem#0", "serial": "0a"}],
    }
    assert ImportBatch.model_validate(batch).to_bytes() == json.dumps(batch).encode()
    assert ImportBatch.from_bytes(json.dumps(batch).encode()).dacs[0] == BatchDac(
        fingerprint="f" * 64, name="dacs.pem#0", serial="0a"
    )
    dac = {"fingerprint": "f" * 64, "batch": "b1", "name": "n", "serial": "0a",
           "dac_b64": "AAE=", "key_wrapped": "w"}  # fmt: skip
    assert ImportedDac.model_validate(dac).to_bytes() == json.dumps(dac).encode()
    claim = {"order_id": "O", "index": 3}
    assert PoolClaim(**claim).to_bytes() == json.dumps(claim).encode()
    assert (
        DacChoice(fingerprint="f" * 64).to_bytes() == json.dumps({"fingerprint": "f" * 64}).encode()
    )
    summary = {
        "name": "test", "kind": "test", "issues_dacs": True, "vendor_id": 0xFFF1,
        "product_id": 0x8000, "dac_validity_days": 365, "pai_pem": "-----BEGIN…",
        "paa_pem": None, "cd_der_base64": "MA==", "key_source_type": "file",
    }  # fmt: skip
    old = json.dumps(summary, sort_keys=True, indent=1).encode()  # catalogue.publish before
    assert ProfileSummary.model_validate(summary).to_bytes() == old
    assert ProfileSummary.from_bytes(old).to_doc() == summary
    partial = {"name": "stall", "vendor_id": 1, "product_id": 2}  # as tests publish them
    assert ProfileSummary.from_bytes(json.dumps(partial).encode()).to_doc() == partial


def test_the_manifest_model_reads_the_streaming_writers_bytes() -> None:
    order = {
        "order_id": "O",
        "quantity": 3,
        "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
        "line": "local",
    }
    made = {"manifest.csv": {"key": "orders/O/manifest.csv", "sha256": "c" * 64, "size": 3}}
    body = manifest.manifest_json(order, [record(i) for i in range(3)], made)
    parsed = Manifest.from_bytes(body)
    assert parsed.quantity == 3 and parsed.line == "local"
    assert parsed.objects["manifest.csv"].size == 3
    assert [d["index"] for d in parsed.devices] == ["0000000", "0000001", "0000002"]
    assert parsed.to_bytes() == body


async def test_accessors_write_once_and_read_back() -> None:
    store = MemoryObjectStore()
    order = example_order()
    assert await objects.read_order(store, order.order_id) is None
    await objects.put_order(store, order.order_id, order.model_dump_json().encode())
    assert (await objects.get_order(store, order.order_id)).quantity == order.quantity
    fields = await objects.read_order_fields(store, order.order_id)
    assert fields is not None and fields.quantity == order.quantity
    claim = OrderClaim(order.order_id, 1, 3, 7, 2, "ab")
    await objects.put_claim(store, claim)
    await objects.put_claim(store, claim)  # a redelivery: same bytes, a no-op
    assert store.objects[keys.claim_json(order.order_id)] == old_claim_bytes(claim.to_json())
    assert await objects.read_claim(store, order.order_id) == claim
    from matterfab.errors import IntegrityError

    with pytest.raises(IntegrityError):
        await objects.put_claim(store, OrderClaim(order.order_id, 2, 3, 7, 2, "ab"))
    assert await objects.read_ready_chunk(store, keys.ready_chunk("X", "gone")) is None
    assert await objects.read_manifest(store, order.order_id) is None
    assert not await objects.is_completed(store, order.order_id)


async def test_the_stall_watch_counts_the_chunks_the_assembler_writes() -> None:
    # One model, both sides: the assembler stores a ready chunk, the allocator's watch reads it.
    from matterfab.services.assembler.service import Assembler
    from tests.unit.test_stall_watch import Rig

    rig = Rig()
    await rig.accept("SHARE-1", 4)
    _, _, images = lot_of_images("SHARE-1", 4, 0, 4)
    assembler = Assembler(rig.store)
    for msg in images[:3]:
        assert await assembler.handle(msg) == []
    await assembler.flush()
    (key,) = await objects.ready_chunk_keys(rig.store, "SHARE-1")
    assert key.startswith(keys.ready_prefix("SHARE-1"))
    assert await rig.at(0) == []
    assert rig.watch.orders["SHARE-1"].count == 3
    assert await rig.at(60) == [("SHARE-1", 1)]  # device 3, in no chunk, is sent again
