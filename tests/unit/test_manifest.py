"""Manifest assembly is deterministic and follows the contract's header."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab import lots
from matterfab.errors import IntegrityError
from matterfab.matter import payload
from matterfab.messages import ORDER_EVENTS, ImageReady, ObjectRef
from matterfab.messages.onboarding import OnboardingRecord
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader
from matterfab.runtime import Emit
from matterfab.services.assembler import manifest
from matterfab.services.assembler.service import Assembler


def record(i: int) -> dict[str, Any]:
    p = payload.SetupPayload(
        0xFFF1, 0x8000, payload.CommissioningFlow.STANDARD, payload.Discovery.BLE, i, 20202021 + i
    )
    ref = {"key": f"orders/O/devices/{i:07d}/partition.bin", "sha256": "a" * 64, "size": 24576}
    return {
        "device_id": f"O/{i:07d}",
        "index": i,
        "quantity": 3,
        "vendor_id": 0xFFF1,
        "product_id": 0x8000,
        "serial_num": f"SN{i}",
        "discriminator": i,
        "qr_payload": payload.encode_qr(p),
        "manual_code": payload.encode_manual(p),
        "rd_id_uid": None,
        "dac_serial": f"{i:02x}",
        "objects": {
            "partition": ref,
            "qrcode": {**ref, "key": f"orders/O/devices/{i:07d}/qrcode.png"},
        },
        "onboarding": {"key": "k", "sha256": "b" * 64, "size": 1},
    }


def test_csv_header_rows_and_passcode_from_qr() -> None:
    records = [record(2), record(0), record(1)]
    text = manifest.manifest_csv(records).decode()
    assert text.splitlines()[0] == ",".join(manifest.MANIFEST_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["index"] for r in rows] == ["0000000", "0000001", "0000002"]
    assert rows[1]["passcode"] == "20202022"
    assert rows[0]["rd_id_uid"] == ""


def test_zip_is_deterministic_and_named_by_serial() -> None:
    a = manifest.qrcodes_zip([("SN1", b"png1"), ("SN0", b"png0")])
    b = manifest.qrcodes_zip([("SN0", b"png0"), ("SN1", b"png1")])
    assert a == b
    zf = zipfile.ZipFile(io.BytesIO(a))
    assert zf.namelist() == ["SN0.png", "SN1.png"]
    assert zf.read("SN1.png") == b"png1"


def test_manifest_json_lists_every_object() -> None:
    order = {
        "order_id": "O",
        "quantity": 2,
        "product": {},
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
    }
    doc = json.loads(
        manifest.manifest_json(
            order,
            [record(1), record(0)],
            {"manifest.csv": {"key": "c", "sha256": "c" * 64, "size": 3}},
        )
    )
    assert [d["index"] for d in doc["devices"]] == ["0000000", "0000001"]
    assert set(doc["devices"][0]["objects"]) == {"partition", "qrcode", "onboarding"}
    assert doc["objects"]["manifest.csv"]["key"] == "c"


def test_builder_json_is_the_whole_document_dumped_and_ignores_repeats() -> None:
    order = {
        "order_id": "O",
        "quantity": 3,
        "product": {"vendor_id": 0xFFF1},
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
    }
    objects = {"qrcodes.zip": {"key": "z", "sha256": "d" * 64, "size": 9}}
    built = manifest.ManifestBuilder(order)
    for i in (2, 0, 1, 0):  # any order; a device seen twice (two chunks) counts once
        built.add(record(i), f"png{i}".encode())
    assert len(built) == 3 and 1 in built and 3 not in built
    assert built.csv() == manifest.manifest_csv([record(0), record(1), record(2)])
    body = built.json(objects)
    doc = json.loads(body)
    assert body == (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert [d["index"] for d in doc["devices"]] == ["0000000", "0000001", "0000002"]
    zf = zipfile.ZipFile(io.BytesIO(built.qrcodes_zip()))
    assert zf.namelist() == ["SN0.png", "SN1.png", "SN2.png"]


def test_secure_cert_columns_trail_and_are_empty_unless_secure_cert() -> None:
    assert manifest.MANIFEST_COLUMNS[13:15] == ("secure_cert_key", "secure_cert_sha256")
    with_cert = record(1)
    cert = {"key": "orders/O/devices/0000001/esp_secure_cert.bin", "sha256": "c" * 64, "size": 1168}
    with_cert["objects"] = {**with_cert["objects"], "secure_cert": cert}
    rows = list(csv.DictReader(io.StringIO(manifest.manifest_csv([record(0), with_cert]).decode())))
    assert (rows[0]["secure_cert_key"], rows[0]["secure_cert_sha256"]) == ("", "")
    assert (rows[1]["secure_cert_key"], rows[1]["secure_cert_sha256"]) == (cert["key"], "c" * 64)


def test_manifest_json_carries_dac_storage_and_the_secure_cert_ref() -> None:
    order = {
        "order_id": "O",
        "quantity": 1,
        "product": {},
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
        "dac_storage": "secure-cert",
    }
    device = record(0)
    cert = {"key": "orders/O/devices/0000000/esp_secure_cert.bin", "sha256": "c" * 64, "size": 9}
    device["objects"] = {**device["objects"], "secure_cert": cert}
    doc = json.loads(manifest.manifest_json(order, [device], {}))
    assert doc["dac_storage"] == "secure-cert"
    assert doc["devices"][0]["objects"]["secure_cert"] == cert
    assert doc["devices"][0]["secure_cert_sha256"] == "c" * 64
    del order["dac_storage"]  # an order.json written before the field existed
    assert json.loads(manifest.manifest_json(order, [device], {}))["dac_storage"] == "factory-nvs"


def only(emits: list[Emit], topic: str) -> list[Any]:
    return [e.message for e in emits if e.topic == topic]


# -- the assembler's manifest from devices whose label files live in a lot object ---------


def lot_of_images(
    order_id: str, quantity: int, first: int, count: int
) -> tuple[str, bytes, list[ImageReady]]:
    """A labels lot (QR PNGs, then onboarding records) of `count` devices, and their images."""
    key = lots.lot_key(order_id, first, lots.LABELS)
    indices = range(first, first + count)
    pngs = [lots.Piece(i, "qrcode.png", f"PNG {i} ".encode() * (5 + i % 3)) for i in indices]
    qr_refs = {
        e.index: ObjectRef(key=key, sha256=e.sha256, size=e.size, offset=e.offset)
        for e in lots.layout(pngs)
    }
    records = []
    for i in indices:
        row = record(i)
        row.pop("onboarding")
        row.update(
            device_id=f"{order_id}/{i:07d}",
            quantity=quantity,
            objects={
                "partition": {
                    **row["objects"]["partition"],
                    "key": f"orders/{order_id}/devices/{i:07d}/partition.bin",
                },
                "qrcode": qr_refs[i],
            },
        )
        records.append(OnboardingRecord.model_validate(row))
    onboarding = [lots.Piece(r.index, "onboarding.json", r.to_json()) for r in records]
    body, entries = lots.pack([*pngs, *onboarding])
    refs = {
        e.index: ObjectRef(key=key, sha256=e.sha256, size=e.size, offset=e.offset)
        for e in entries
        if e.name == "onboarding.json"
    }
    images = [ImageReady.of(r, order_id, refs[r.index]) for r in records]  # no inline PNG
    return key, body, images


async def put_order(store: MemoryObjectStore, order_id: str, quantity: int) -> None:
    order = {
        "order_id": order_id,
        "quantity": quantity,
        "product": {},
        "mfg_date": "2026-11-29",
        "attestation_profile": "p",
    }
    await store.put_once(f"orders/{order_id}/order.json", json.dumps(order).encode())


async def test_assembler_manifest_gives_lot_refs_exactly_and_reads_each_lot_once() -> None:
    store = MemoryObjectStore()
    await put_order(store, "LOT-1", 45)
    images: list[ImageReady] = []
    for first in (0, 21, 42):  # lots of 21, the last one shorter
        key, body, made = lot_of_images("LOT-1", 45, first, min(21, 45 - first))
        store.objects[key] = body
        images += made
    asm = Assembler(store)
    for image in reversed(images):  # any order
        await asm.handle(image)
    before = store.requests
    done = only(await asm.flush(), ORDER_EVENTS)
    assert [e.status for e in done] == ["progress", "completed"]
    # PUT the chunk, LIST the chunks, GET manifest.json (not there yet), GET the chunk again and
    # order.json, GET the three lot objects (the PNGs, through a ref reader), PUT qrcodes.zip,
    # manifest.csv and manifest.json. Nothing for the device index (issue #26: its image
    # records are the labels.lot pieces, its pointers are written when a device is flashed).
    assert store.requests - before == 1 + 1 + 1 + 1 + 1 + 3 + 3
    assert not [k for k in store.objects if k.startswith("fleet/")]
    doc = json.loads(await store.get(done[1].manifest.key))
    for image, device in zip(images, doc["devices"], strict=True):
        want = {
            name: ref.model_dump(exclude_none=True)
            for name, ref in image.objects
            if ref is not None
        }
        assert device["objects"] == want
        assert device["objects"]["qrcode"]["offset"] >= 0
        assert "offset" not in device["objects"]["partition"]
        onboarding = await RefReader(store).read(device["objects"]["onboarding"])
        assert json.loads(onboarding)["objects"]["qrcode"] == device["objects"]["qrcode"]
    zf = zipfile.ZipFile(io.BytesIO(await store.get("orders/LOT-1/qrcodes.zip")))
    assert zf.read("SN7.png") == b"PNG 7 " * 6
    # Deterministic: another assembler given the same images writes the same bytes.
    other = MemoryObjectStore()
    other.objects = {
        k: v
        for k, v in store.objects.items()
        if "/ready/" not in k and "manifest" not in k and "qrcodes" not in k
    }
    again = Assembler(other)
    for image in images:
        await again.handle(image)
    (_, completed) = only(await again.flush(), ORDER_EVENTS)
    assert completed.manifest == done[1].manifest


async def test_a_label_png_that_does_not_match_its_lot_is_an_integrity_error() -> None:
    store = MemoryObjectStore()
    await put_order(store, "LOT-2", 2)
    key, body, images = lot_of_images("LOT-2", 2, 0, 2)
    damaged, at = bytearray(body), images[1].objects.qrcode.offset
    assert at is not None
    damaged[at] ^= 1
    store.objects[key] = bytes(damaged)
    asm = Assembler(store)
    for image in images:
        await asm.handle(image)
    with pytest.raises(IntegrityError, match=re.escape(f"{key} bytes ")):
        await asm.flush()


async def test_the_batch_that_brings_an_orders_last_images_asks_for_a_flush_at_once() -> None:
    store = MemoryObjectStore()
    await put_order(store, "LOT-2", 45)
    images: list[ImageReady] = []
    for first in (0, 21, 42):
        key, body, made = lot_of_images("LOT-2", 45, first, min(21, 45 - first))
        store.objects[key] = body
        images += made
    asm = Assembler(store)
    assert not asm.completes_an_order()  # nothing held
    for image in images[:30]:
        await asm.handle(image)
    assert not asm.completes_an_order()  # 30 of 45: the linger may gather more
    await asm.flush()  # stored: 30 known in chunks, none pending
    for image in images[30:44]:
        await asm.handle(image)
    assert not asm.completes_an_order()  # 44 of 45
    await asm.handle(images[29])  # a redelivered image already stored adds nothing
    assert not asm.completes_an_order()
    await asm.handle(images[44])
    assert asm.completes_an_order()  # the last one: the manifest should not wait
    done = only(await asm.flush(), ORDER_EVENTS)
    assert [e.status for e in done][-1] == "completed"
    assert not asm.completes_an_order()


@settings(max_examples=60, deadline=None)
@given(
    order_of=st.lists(st.integers(0, 11), min_size=1, max_size=30),
    firmware=st.booleans(),
    line=st.booleans(),
)
def test_builder_writes_the_document_json_dumps_writes_in_any_device_order(
    order_of: list[int], firmware: bool, line: bool
) -> None:
    # Devices in any order, repeated, with gaps: the same bytes as dumping the whole document.
    order = {
        "order_id": "O",
        "quantity": 12,
        "product": {"vendor_id": 0xFFF1},
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
        **({"line": "line-a"} if line else {}),
    }
    bundle = {"name": "fw", "sha256": "e" * 64} if firmware else None
    objects = {"manifest.csv": {"key": "c", "sha256": "c" * 64, "size": 3}}
    built = manifest.ManifestBuilder(order, bundle)
    for i in order_of:
        built.add(record(i), b"")
    devices = sorted(set(order_of))
    assert built.csv() == manifest.manifest_csv([record(i) for i in devices])
    whole = {
        "order_id": "O",
        "quantity": 12,
        "product": order["product"],
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
        "dac_storage": "factory-nvs",
        "objects": objects,
        "devices": [manifest.device_entry(record(i)) for i in devices],
        **({"firmware": bundle} if bundle else {}),
        **({"line": "line-a"} if line else {}),
    }
    want = json.dumps(whole, sort_keys=True, separators=(",", ":")) + "\n"
    assert built.json(objects) == want.encode()


def test_devices_in_index_order_are_written_at_once_and_never_held() -> None:
    built = manifest.ManifestBuilder(None)
    for i in range(5):
        built.add(record(i), b"")
        assert built.waiting == 0
    built.add(record(7), b"")
    built.add(record(6), b"")
    assert built.waiting == 2  # 5 has not come: 6 and 7 wait for it
    built.add(record(5), b"")
    assert built.waiting == 0
    with pytest.raises(ValueError, match="without its order"):
        built.json({})


async def test_a_manifest_from_chunks_stored_out_of_index_order_is_the_same_document() -> None:
    # Chunks are read by their first device, whatever order they were stored in; the bytes
    # do not depend on how the devices were split into chunks.
    store = MemoryObjectStore()
    await put_order(store, "LOT-2", 45)
    lots_made = [lot_of_images("LOT-2", 45, first, min(21, 45 - first)) for first in (0, 21, 42)]
    for key, body, _ in lots_made:
        store.objects[key] = body
    asm = Assembler(store)
    events = []
    for _, _, made in reversed(lots_made):  # one chunk per lot, the last lot's first
        for image in made:
            await asm.handle(image)
        events += only(await asm.flush(), ORDER_EVENTS)
    assert len([k for k in store.objects if "/ready/" in k]) == 3
    (completed,) = [e for e in events if e.status == "completed"]
    other = MemoryObjectStore()
    other.objects = {k: v for k, v in store.objects.items() if k.endswith(".lot")}
    await put_order(other, "LOT-2", 45)
    again = Assembler(other)
    for _, _, made in lots_made:
        for image in made:
            await again.handle(image)
    (_, one_chunk) = only(await again.flush(), ORDER_EVENTS)
    assert one_chunk.manifest == completed.manifest
