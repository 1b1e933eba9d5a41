"""dac_storage through the signer and builder handlers, on the in-memory store.

secure-cert: the DAC is issued as for factory-nvs, the NVS partition lacks the four DAC keys
and a write-once esp_secure_cert.bin holds them; on-module: nothing is issued (no dacs.lot, no
ledger entry, empty dac_serial), even with a CD-only profile, and the partition has no DAC.
Each case is a lot of one device, as the allocator would send it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_der_private_key

from matterfab import lots, profiles
from matterfab.cli import orders as orders_cli
from matterfab.errors import AttestationError, MatterfabError
from matterfab.keywrap import KeyWrapper
from matterfab.lines import ensure_local_line
from matterfab.matter import audit as audit_mod
from matterfab.matter import nvs_reader, secure_cert
from matterfab.messages import (
    DAC_LEDGER,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ImageReady,
    LotAllocated,
    LotAttested,
)
from matterfab.messages.base import device_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader
from matterfab.runtime import Emit
from matterfab.services.builder.service import Builder
from matterfab.services.signer.service import Signer
from tests.sealed import local_keys, open_if_sealed

VID, PID = 0xFFF1, 0x8000
DAC_KEYS = {"dac-cert", "dac-key", "dac-pub-key", "pai-cert"}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("issuing", VID, PID, profiles_dir=path)
    profiles.create_cd_only_profile("cd-only", VID, PID, profiles_dir=path)
    return path


@pytest.fixture
async def line(profile_dir: Path, tmp_path: Path) -> SimpleNamespace:
    store = MemoryObjectStore()
    await ensure_local_line(store, tmp_path)  # as `matterfab up` does: line local, its key
    wrapper = KeyWrapper(os.urandom(32))
    return SimpleNamespace(
        keys=local_keys(tmp_path),
        store=store,
        signer=Signer(store, wrapper, profiles_dir=profile_dir),
        builder=Builder(store, wrapper, None),
    )


def allocated(mode: str, profile: str = "issuing", index: int = 0) -> LotAllocated:
    return LotAllocated(
        order_id="DS-1",
        lot_id=f"DS-1/{index:07d}",
        quantity=2,
        product={"vendor_id": VID, "product_id": PID, "vendor_name": "Acme"},
        mfg_date="2026-11-29",
        attestation_profile=profile,
        iteration_count=1000,
        flow="standard",
        discovery=["ble"],
        partition_size=0x6000,
        dac_storage=mode,
        devices=[
            {
                "index": index,
                "serial_num": f"SN-{index}",
                "discriminator": 100 + index,
                "passcode": 20202021,
                "salt_b64": base64.b64encode(bytes(32)).decode(),
            }
        ],
    )


def dacs_key(index: int = 0) -> str:
    return lots.lot_key("DS-1", index, lots.DACS)


def only(emits: Sequence[Emit], topic: str) -> list[Any]:
    return [e.message for e in emits if e.topic == topic]


async def run(line: SimpleNamespace, msg: LotAllocated) -> tuple[list[Emit], ImageReady]:
    emits = await line.signer.handle(msg)
    (attested,) = only(emits, DEVICES_ATTESTED)
    (image,) = only(await line.builder.handle(attested), IMAGES_READY)
    return emits, image


async def read(line: SimpleNamespace, ref: Any) -> bytes:
    """What a ref stands for: a whole object, or a device's piece of a lot object (opened)."""
    return open_if_sealed(await RefReader(line.store).read(ref), line.keys)


async def chip_factory(line: SimpleNamespace, image: ImageReady) -> dict[str, Any]:
    partition = open_if_sealed(await RefReader(line.store).read(image.objects.partition), line.keys)
    return nvs_reader.decode_partition(partition)["chip-factory"]


async def test_factory_nvs_unchanged_no_secure_cert(line: SimpleNamespace) -> None:
    _emits, image = await run(line, allocated("factory-nvs"))
    assert image.objects.secure_cert is None
    assert DAC_KEYS <= set(await chip_factory(line, image))


async def test_secure_cert_device(line: SimpleNamespace, profile_dir: Path) -> None:
    emits, image = await run(line, allocated("secure-cert"))
    (lot,) = only(emits, DEVICES_ATTESTED)
    (attested,) = lot.devices
    (entry,) = only(emits, DAC_LEDGER)  # issued exactly as for factory-nvs
    assert image.dac_serial == attested.dac_serial == entry.dacs[0].dac_serial != ""
    assert not DAC_KEYS & set(await chip_factory(line, image))
    ref = image.objects.secure_cert
    assert ref is not None and ref.key == lots.lot_key("DS-1", 0, lots.IMAGES)
    assert ref.offset is not None and not await line.store.exists(
        device_key("DS-1", 0, "esp_secure_cert.bin")
    )
    data = await RefReader(line.store).read(ref)  # its own piece of images.lot, sealed
    assert hashlib.sha256(data).hexdigest() == ref.sha256 and len(data) == ref.size
    plain = open_if_sealed(data, line.keys)  # sealed to line local: the plaintext's digest
    assert ref.sealed is not None and ref.sealed.sha256 == hashlib.sha256(plain).hexdigest()
    read_back = secure_cert.read_secure_cert(plain)
    assert image.objects.dac is not None and image.objects.dac.key == dacs_key()
    dac_der = await read(line, image.objects.dac)
    assert read_back.dac_cert == dac_der and attested.dac_cert_b64 == ""  # in dacs.lot only
    pai = profiles.load_profile("issuing", profile_dir).require_pai()
    assert read_back.pai_cert == pai.public_bytes(Encoding.DER)
    cert = x509.load_der_x509_certificate(dac_der)
    derived = secure_cert.sec1_der(read_back.dac_key_raw)
    assert derived == read_back.dac_key
    assert load_der_private_key(read_back.dac_key, None).public_key() == cert.public_key()
    onboarding = json.loads(await read(line, image.objects.onboarding))
    assert onboarding["objects"]["secure_cert"]["sha256"] == ref.sha256


async def test_secure_cert_rebuild_is_a_no_op(line: SimpleNamespace) -> None:
    msg = allocated("secure-cert")
    _emits, first = await run(line, msg)
    _emits, again = await run(line, msg)  # redelivered: the signer adopts, the builder rebuilds
    assert again.objects.secure_cert == first.objects.secure_cert


@pytest.mark.parametrize("profile", ["issuing", "cd-only"])
async def test_on_module_issues_nothing(line: SimpleNamespace, profile: str) -> None:
    emits, image = await run(line, allocated("on-module", profile))
    assert only(emits, DAC_LEDGER) == []
    (lot,) = only(emits, DEVICES_ATTESTED)
    assert isinstance(lot, LotAttested) and lot.pai_cert_b64 == "" and lot.cd_b64
    (attested,) = lot.devices
    assert (attested.dac_serial, attested.dac_cert_b64, attested.dac_key_wrapped) == ("", "", "")
    assert attested.dac is None
    assert image.dac_serial == ""
    assert image.objects.dac is None and image.objects.secure_cert is None
    assert not await line.store.exists(dacs_key())
    assert not await line.store.exists(device_key("DS-1", 0, "dac.der"))
    factory = await chip_factory(line, image)
    assert not DAC_KEYS & set(factory)
    assert factory["cert-dclrn"][1]  # the profile's CD is still written


async def test_cd_only_profile_never_issues(line: SimpleNamespace) -> None:
    for mode in ("factory-nvs", "secure-cert"):
        with pytest.raises(AttestationError, match="CD-only"):
            await line.signer.handle(allocated(mode, "cd-only"))
    assert not await line.store.exists(dacs_key())


# -- audit (what `matterfab verify` runs per device) ---------------------------------------


async def artifacts(line: SimpleNamespace, image: ImageReady) -> dict[str, Any]:
    row = {
        "serial_num": image.serial_num,
        "vendor_id": image.vendor_id,
        "product_id": image.product_id,
        "discriminator": image.discriminator,
        "passcode": "20202021",
        "qr_payload": image.qr_payload,
        "manual_code": image.manual_code,
        "rd_id_uid": image.rd_id_uid or "",
        "dac_serial": image.dac_serial,
    }
    objs = image.objects
    return {
        "row": row,
        "partition": await read(line, objs.partition),
        "dac_der": await read(line, objs.dac) if objs.dac else None,
        "secure_cert_image": await read(line, objs.secure_cert) if objs.secure_cert else None,
    }


def audit(a: dict[str, Any], mode: str, paa: Any = None) -> list[str]:
    return audit_mod.audit_device(
        a["row"],
        a["partition"],
        a["dac_der"],
        secure_cert_image=a["secure_cert_image"],
        dac_storage=mode,
        paa=paa,
    )


@pytest.mark.parametrize("mode", ["factory-nvs", "secure-cert", "on-module"])
async def test_audit_passes_each_mode(line: SimpleNamespace, profile_dir: Path, mode: str) -> None:
    _emits, image = await run(line, allocated(mode))
    paa = profiles.load_profile("issuing", profile_dir).paa_cert
    assert audit(await artifacts(line, image), mode, paa) == []


async def test_audit_finds_a_secure_cert_dac_that_is_not_the_devices(line: SimpleNamespace) -> None:
    _emits, image = await run(line, allocated("secure-cert"))
    _emits, other = await run(line, allocated("secure-cert", index=1))
    a = await artifacts(line, image)
    a["secure_cert_image"] = (await artifacts(line, other))["secure_cert_image"]
    assert "the esp_secure_cert.bin's DAC differs from dac.der" in audit(a, "secure-cert")
    a["secure_cert_image"] = b"\x00" * 32
    assert any("does not decode" in p for p in audit(a, "secure-cert"))
    a["secure_cert_image"] = None
    assert "esp_secure_cert.bin is missing (dac_storage secure-cert)" in audit(a, "secure-cert")


async def test_audit_finds_dac_keys_or_a_dac_where_the_mode_has_none(
    line: SimpleNamespace,
) -> None:
    _emits, full = await run(line, allocated("factory-nvs"))
    a = await artifacts(line, full)
    found = audit(a, "on-module")
    assert any("partition holds dac-cert, dac-key, dac-pub-key, pai-cert" in p for p in found)
    assert "dac.der exists, but on-module orders issue no DAC" in found
    assert "the manifest gives a dac_serial, but on-module orders issue no DAC" in found


@pytest.mark.parametrize(
    ("mode", "objects", "fits"),
    [
        ("factory-nvs", {"partition", "dac"}, True),
        ("factory-nvs", {"partition", "dac", "secure_cert"}, False),
        ("secure-cert", {"partition", "dac", "secure_cert"}, True),
        ("secure-cert", {"partition", "dac"}, False),
        ("on-module", {"partition"}, True),
        ("on-module", {"partition", "dac"}, False),
    ],
)
def test_fetch_refuses_a_manifest_whose_objects_do_not_fit_the_mode(
    mode: str, objects: set[str], fits: bool
) -> None:
    doc = {
        "dac_storage": mode,
        "devices": [{"device_id": "O/0000000", "objects": {key: {} for key in objects}}],
    }
    if fits:
        orders_cli._check_dac_storage(doc)
        return
    with pytest.raises(MatterfabError, match=f"does not fit dac_storage {mode}"):
        orders_cli._check_dac_storage(doc)
