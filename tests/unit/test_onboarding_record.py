"""One onboarding record: onboarding.json, ImageReady and the manifest rows follow it."""

from __future__ import annotations

import csv
import io
import json

import pytest

from matterfab.matter import payload
from matterfab.messages import ImageReady, ObjectRef
from matterfab.messages.onboarding import MANIFEST_COLUMNS, OnboardingObjects, OnboardingRecord
from matterfab.services.assembler import manifest
from matterfab.services.assembler.service import record_of

# DESIGN §5, verbatim: the columns are derived from the record and never move (a new
# per-device field adds its column after them).
DESIGN_HEADER = (
    "index,device_id,serial_num,vendor_id,product_id,discriminator,passcode,"
    "qr_payload,manual_code,rd_id_uid,dac_serial,partition_key,partition_sha256,"
    "secure_cert_key,secure_cert_sha256"
)
SETUP = payload.SetupPayload(
    0xFFF1, 0x8000, payload.CommissioningFlow.STANDARD, payload.Discovery.BLE, 3840, 20202021
)


def ref(name: str, digit: str) -> ObjectRef:
    return ObjectRef(key=f"orders/O-1/devices/0000007/{name}", sha256=digit * 64, size=10)


def record(**objects: ObjectRef) -> OnboardingRecord:
    return OnboardingRecord(
        device_id="O-1/0000007",
        index=7,
        quantity=10,
        vendor_id=0xFFF1,
        product_id=0x8000,
        serial_num="SN-7",
        discriminator=3840,
        qr_payload=payload.encode_qr(SETUP),
        manual_code=payload.encode_manual(SETUP),
        rd_id_uid="00112233445566778899aabbccddeeff",
        dac_serial="7f01",
        objects=OnboardingObjects(
            partition=ref("partition.bin", "a"), qrcode=ref("qrcode.png", "b"), **objects
        ),
    )


def test_onboarding_json_keeps_its_keys_and_layout_and_round_trips() -> None:
    rec = record(dac=ref("dac.der", "c"))
    body = rec.to_json()
    # The document the builder wrote by hand before the record existed: same keys, values and
    # layout (a field added since adds its key beside them).
    legacy = {
        "device_id": "O-1/0000007",
        "index": 7,
        "quantity": 10,
        "vendor_id": 0xFFF1,
        "product_id": 0x8000,
        "serial_num": "SN-7",
        "discriminator": 3840,
        "qr_payload": rec.qr_payload,
        "manual_code": rec.manual_code,
        "rd_id_uid": "00112233445566778899aabbccddeeff",
        "dac_serial": "7f01",
        "objects": {
            "partition": {"key": ref("partition.bin", "a").key, "sha256": "a" * 64, "size": 10},
            "qrcode": {"key": ref("qrcode.png", "b").key, "sha256": "b" * 64, "size": 10},
            "dac": {"key": ref("dac.der", "c").key, "sha256": "c" * 64, "size": 10},
        },
    }
    doc = json.loads(body)
    assert {k: doc[k] for k in legacy} == legacy
    assert body == json.dumps(doc, sort_keys=True, indent=1).encode()
    assert OnboardingRecord.model_validate_json(body) == rec
    assert "nvs_keys" not in doc["objects"]  # absent refs are left out


def test_manifest_columns_and_row_derive_from_the_record() -> None:
    design = tuple(DESIGN_HEADER.split(","))
    assert MANIFEST_COLUMNS[: len(design)] == design
    assert manifest.MANIFEST_COLUMNS == MANIFEST_COLUMNS
    rec = record(secure_cert=ref("esp_secure_cert.bin", "d"))
    row = rec.manifest_row()
    assert list(row) == list(MANIFEST_COLUMNS)
    assert row["index"] == "0000007"
    assert row["passcode"] == "20202021"  # from the QR payload: the record holds no passcode
    assert row["partition_key"] == "orders/O-1/devices/0000007/partition.bin"
    assert row["secure_cert_sha256"] == "d" * 64
    plain = record().model_copy(update={"rd_id_uid": None}).manifest_row()
    assert (plain["rd_id_uid"], plain["secure_cert_key"], plain["secure_cert_sha256"]) == (
        "",
        "",
        "",
    )
    text = manifest.manifest_csv([{**json.loads(rec.to_json()), "onboarding": {}}]).decode()
    (csv_row,) = csv.DictReader(io.StringIO(text))
    assert csv_row == {k: str(v) for k, v in row.items()}


def test_image_ready_is_the_record_plus_its_message_fields() -> None:
    rec = record(dac=ref("dac.der", "c"))
    onboarding = ref("onboarding.json", "e")
    ready = ImageReady.of(rec, "O-1", onboarding, qrcode_png_b64="cG5n")
    assert set(OnboardingRecord.model_fields) <= set(ImageReady.model_fields)
    assert ready.record() == rec
    assert ready.objects.onboarding == onboarding
    assert ready.objects.dac == rec.objects.dac
    # What the assembler keeps per device is the record's onboarding.json plus its own ref.
    entry = record_of(ready)
    assert {k: v for k, v in entry.items() if k not in manifest.NOT_RECORD} == json.loads(
        rec.to_json()
    )
    assert entry["onboarding"] == {"key": onboarding.key, "sha256": "e" * 64, "size": 10}
    assert manifest.manifest_row(entry) == rec.manifest_row()


def test_image_ready_of_equals_the_validated_message() -> None:
    """`ImageReady.of` skips validation (its parts are validated): it equals what validating
    its dump makes, on the wire too, and refuses a field ImageReady does not have."""
    for rec in (record(), record(dac=ref("dac.der", "c"), nvs_keys=lot_ref("x", "d", 7))):
        ready = ImageReady.of(rec, "O-1", ref("onboarding.json", "e"), efuse_chip="esp32h2")
        checked = ImageReady.model_validate(ready.model_dump())
        assert ready == checked
        assert ready.model_dump_json() == checked.model_dump_json()
    with pytest.raises(TypeError, match="no fields"):
        ImageReady.of(record(), "O-1", ref("onboarding.json", "e"), efuse="esp32h2")


def lot_ref(name: str, digit: str, offset: int) -> ObjectRef:
    key = f"orders/O-1/lots/0000000/{name}"
    return ObjectRef(key=key, sha256=digit * 64, size=10, offset=offset)


def test_refs_into_lot_objects_keep_their_offset_everywhere() -> None:
    """A piece of a lot object is key, sha256, size and offset in onboarding.json, the
    assembler's chunk entry and manifest.json; a whole object has no offset key at all."""
    rec = record(dac=lot_ref("dacs.lot", "c", 1200))
    rec = rec.model_copy(
        update={"objects": rec.objects.model_copy(update={"qrcode": lot_ref("labels.lot", "b", 0)})}
    )
    onboarding = lot_ref("labels.lot", "e", 10)
    doc = json.loads(rec.to_json())
    assert doc["objects"] == {
        "partition": {"key": ref("partition.bin", "a").key, "sha256": "a" * 64, "size": 10},
        "qrcode": {
            "key": "orders/O-1/lots/0000000/labels.lot",
            "sha256": "b" * 64,
            "size": 10,
            "offset": 0,
        },
        "dac": {
            "key": "orders/O-1/lots/0000000/dacs.lot",
            "sha256": "c" * 64,
            "size": 10,
            "offset": 1200,
        },
    }
    assert OnboardingRecord.model_validate_json(rec.to_json()) == rec
    ready = ImageReady.of(rec, "O-1", onboarding, qrcode_png_b64="cG5n")
    again = ImageReady.model_validate_json(ready.model_dump_json())
    assert again.objects.onboarding.offset == 10 and again.objects.qrcode.offset == 0
    entry = record_of(again)
    assert entry["onboarding"] == {
        "key": "orders/O-1/lots/0000000/labels.lot",
        "sha256": "e" * 64,
        "size": 10,
        "offset": 10,
    }
    order = {"order_id": "O-1", "quantity": 1, "product": {}, "mfg_date": "2026-11-29"}
    body = manifest.manifest_json({**order, "attestation_profile": "p"}, [entry], {})
    row = json.loads(body)["devices"][0]
    assert row["objects"] == {**doc["objects"], "onboarding": entry["onboarding"]}
    assert "null" not in json.dumps(row["objects"])


def test_a_chunk_entry_is_the_record_dumped_from_the_message_without_rebuilding_it() -> None:
    # record_of dumps the message's record fields directly; it must equal what building the
    # OnboardingRecord first and dumping it gave, for every shape of record.
    shapes = [
        record(),
        record(dac=ref("dac.der", "c")),
        record(dac=lot_ref("dacs.lot", "c", 1200), secure_cert=ref("esp_secure_cert.bin", "d")),
        record(nvs_keys=ref("nvs_keys.bin", "e"), efuse_key=ref("efuse_key.bin", "f")),
        record().model_copy(update={"rd_id_uid": None}),
    ]
    for rec in shapes:
        for png in (None, "cG5n"):
            sent = ImageReady.of(rec, "O-1", lot_ref("labels.lot", "e", 10), qrcode_png_b64=png)
            ready = ImageReady.model_validate_json(sent.model_dump_json())  # as consumed
            want = ready.record().to_doc()
            want["onboarding"] = ready.objects.onboarding.model_dump(mode="json", exclude_none=True)
            if png:
                want["qrcode_png_b64"] = png
            assert record_of(ready) == want
            assert json.dumps(record_of(ready), sort_keys=True) == json.dumps(want, sort_keys=True)
