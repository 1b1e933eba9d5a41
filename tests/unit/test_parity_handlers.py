"""Issue #24's work-order fields through allocation, the signer and builder handlers, the
manifest row and the audit (what `matterfab verify` runs), on the in-memory store.

The bytes themselves are compared with esp-matter-mfg-tool in
tests/conformance/test_mfgtool_parity.py; here: the fields reach the artifacts they belong in,
and nowhere else.
"""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_dac_storage_handlers import DAC_KEYS, PID, VID, artifacts, audit, only, read

from matterfab import profiles
from matterfab.keywrap import KeyWrapper
from matterfab.lines import ensure_local_line
from matterfab.matter import nvs_reader, payload, secure_cert, spake2p
from matterfab.messages import DEVICES_ATTESTED, IMAGES_READY, ImageReady, WorkOrder
from matterfab.messages.onboarding import DYNAMIC, MANIFEST_COLUMNS
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.allocator.allocation import Claim, allocate_chunk, lot_messages
from matterfab.services.builder.service import Builder
from matterfab.services.signer.service import Signer
from tests.sealed import local_keys

SALT = bytes(range(16, 48))


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("issuing", VID, PID, profiles_dir=path)
    return path


@pytest.fixture
async def line(profile_dir: Path, tmp_path: Path) -> SimpleNamespace:
    store = MemoryObjectStore()
    await ensure_local_line(store, tmp_path)  # as `matterfab up` does: line local, its key
    wrapper = KeyWrapper(bytes(range(32)))
    return SimpleNamespace(
        keys=local_keys(tmp_path),
        store=store,
        signer=Signer(store, wrapper, profiles_dir=profile_dir),
        builder=Builder(store, wrapper, None),
    )


def order(**changes: Any) -> WorkOrder:
    doc: dict[str, Any] = {
        "order_id": "PAR-1",
        "product": {
            "vendor_id": VID,
            "product_id": PID,
            "calendar_types": ["gregorian", "buddhist"],
            "locales": ["en-US", "zh-Hant-TW"],
            "fixed_labels": [{"endpoint": 1, "label": "room", "value": "kitchen"}],
            "supported_modes": [
                {"endpoint": 1, "label": "Eco", "mode": 3, "tags": [{"value": 7, "mfg_code": 0}]}
            ],
        },
        "quantity": 1,
        "mfg_date": "2026-11-29ACME0001",
        "attestation_profile": "issuing",
        "commissioning": {"iteration_count": 1000, "discovery": ["ble", "nfc", "thread"]},
        "devices": [{"passcode": 20202021, "salt": base64.b64encode(SALT).decode()}],
    }
    for key, value in changes.items():
        doc[key] = value
    wo = WorkOrder.model_validate(doc)
    assert wo.cross_field_errors() == []
    return wo


async def build(line: SimpleNamespace, wo: WorkOrder) -> ImageReady:
    devices = allocate_chunk(wo, Claim(wo.order_id, 1, 1, 100, 1), 0)
    (lot,) = lot_messages(wo, 0, devices, 1)
    (attested,) = only(await line.signer.handle(lot), DEVICES_ATTESTED)
    (image,) = only(await line.builder.handle(attested), IMAGES_READY)
    assert isinstance(image, ImageReady)
    return image


async def test_device_info_lists_and_discovery_reach_the_device(line: SimpleNamespace) -> None:
    image = await build(line, order())
    factory = nvs_reader.decode_partition(await read(line, image.objects.partition))["chip-factory"]
    assert factory["cal-types"] == ("u32", 0b10001)
    assert factory["locale/1"] == ("string", "zh-Hant-TW")
    assert factory["fl-v/1/0"] == ("string", "kitchen")
    assert factory["st-v/1/0/0"] == ("u32", 7)
    assert factory["mfg-date"] == ("string", "2026-11-29ACME0001")  # stored as given
    assert factory["salt"] == ("string", base64.b64encode(SALT).decode())  # the given salt
    assert payload.decode_qr(image.qr_payload).discovery == 0b110010
    a = await artifacts(line, image)
    assert audit(a, "factory-nvs") == []


async def test_dynamic_passcode_device_has_no_verifier_and_no_codes(line: SimpleNamespace) -> None:
    commissioning = {"iteration_count": 1000, "dynamic_passcode": True}
    image = await build(line, order(commissioning=commissioning, devices=None))
    factory = nvs_reader.decode_partition(await read(line, image.objects.partition))["chip-factory"]
    assert "verifier" not in factory and "salt" in factory
    assert (image.qr_payload, image.manual_code) == ("", "")
    row = image.record().manifest_row()
    assert [row[c] for c in ("passcode", "qr_payload", "manual_code")] == [DYNAMIC] * 3
    assert set(row) == set(MANIFEST_COLUMNS)
    a = await artifacts(line, image)
    a["row"]["passcode"] = row["passcode"]
    assert audit(a, "factory-nvs") == []


async def test_secure_cert_options_move_data_to_tlv_201(line: SimpleNamespace) -> None:
    wo = order(
        dac_storage="secure-cert",
        commissioning={"iteration_count": 1000, "rotating_device_id": True},
        secure_cert={"commissionable_data": True, "rd_id_uid": True},
    )
    image = await build(line, wo)
    factory = nvs_reader.decode_partition(await read(line, image.objects.partition))["chip-factory"]
    moved = {"discriminator", "iteration-count", "salt", "verifier", "rd-id-uid"}
    assert not (moved | DAC_KEYS) & set(factory)
    assert image.objects.secure_cert is not None
    read_back = secure_cert.read_secure_cert(await read(line, image.objects.secure_cert))
    matter = {e.subtype: e.data for e in read_back.matter}
    assert sorted(matter) == [0, 1, 2, 3, 4]  # no random 128/129
    assert int.from_bytes(matter[0], "little") == image.discriminator
    assert matter[2] == SALT
    assert spake2p.verify_verifier(20202021, SALT, 1000, matter[1])
    assert matter[4].hex() == image.rd_id_uid
    assert audit(await artifacts(line, image), "secure-cert") == []


async def test_ecdsa_peripheral_image_holds_no_key(line: SimpleNamespace) -> None:
    wo = order(
        dac_storage="secure-cert",
        secure_cert={"key": "ecdsa-peripheral", "efuse_key_id": 2, "chip": "esp32h2"},
    )
    image = await build(line, wo)
    assert image.objects.secure_cert is not None
    data = await read(line, image.objects.secure_cert)
    entries = secure_cert.decode_entries(data)
    assert (entries[0].type, entries[0].data[0]) == (secure_cert.TlvType.SEC_CFG, 6)
    (key,) = [e for e in entries if e.type == secure_cert.TlvType.PRIV_KEY]
    assert (key.flags, key.data) == (secure_cert.FLAGS_ECDSA_PERIPHERAL, b"")
    assert audit(await artifacts(line, image), "secure-cert") == []
