"""Imported DACs: `dac import` checks (mfg_tool's --dac-cert/--dac-key rules), the pool, and
orders with `dac_source: "imported"` through the allocator, signer and builder handlers.

A batch of 100 DACs issued under the profile's PAI (as a PKI vendor would) is imported; two
orders (60 and 40 devices) take all of them, no DAC twice; a third order is rejected naming
the count; a batch with one bad pair is refused whole, naming the pair, and stores nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_handlers import Line, only, order
from test_handlers import line as line
from test_handlers import profile_dir as profile_dir

from matterfab import dac_pool, lots, profiles
from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, dac_import
from matterfab.messages import DEVICES_ATTESTED, IMAGES_READY
from matterfab.messages.lots import LotAttested

VID, PID = 0xFFF1, 0x8000
PROFILE = "handlers"


def _vendor_dacs(profile_dir: Path, count: int, **kw: Any) -> list[attestation.IssuedDac]:
    """DACs under the profile's PAI, as a PKI vendor would deliver them."""
    loaded = profiles.load_profile(PROFILE, profile_dir)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [
        attestation.issue_dac(
            pai_cert=loaded.require_pai(),
            signer=loaded.signer(),
            vendor_id=kw.get("vendor_id", VID),
            product_id=kw.get("product_id", PID),
            not_before=now - dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=365),
        )
        for _ in range(count)
    ]


def _write_pairs(folder: Path, dacs: list[attestation.IssuedDac]) -> tuple[Path, Path]:
    certs, keys = folder / "certs", folder / "keys"
    certs.mkdir(parents=True)
    keys.mkdir(parents=True)
    for n, d in enumerate(dacs):
        (certs / f"dac-{n:04d}.pem").write_bytes(
            d.certificate.public_bytes(serialization.Encoding.PEM)
        )
        (keys / f"dac-{n:04d}.der").write_bytes(d.private_key_der)  # DER keys, PEM certs
    return certs, keys


def _checked(profile_dir: Path, certs: Path, keys: Path) -> list[dac_import.CheckedDac]:
    loaded = profiles.load_profile(PROFILE, profile_dir)
    pairs = dac_import.read_pairs(certs, keys)
    return dac_import.check_batch(pairs, loaded.require_pai(), VID, PID)


async def _run_order(line: Line, order_id: str, quantity: int) -> list[LotAttested]:
    events = await line.submit(order(order_id, quantity, dac_source="imported"))
    assert [e.status for e in events] == ["accepted"], events
    attested = []
    for lot in line.allocated():
        (one,) = only(await line.signer.handle(lot), DEVICES_ATTESTED)
        attested.append(one)
    return attested


async def test_a_batch_of_100_is_used_by_two_orders_no_dac_twice(
    line: Line,
    profile_dir: Path,
    tmp_path: Path,
) -> None:
    vendor = _vendor_dacs(profile_dir, 100)
    certs, keys = _write_pairs(tmp_path, vendor)
    checked = _checked(profile_dir, certs, keys)
    assert await dac_pool.import_batch(line.store, line.wrapper, PROFILE, "po-1", checked) == 100
    assert len(await dac_pool.unused(line.store, PROFILE)) == 100

    first = await _run_order(line, "IMP-A", 60)
    second = await _run_order(line, "IMP-B", 40)
    used = [d.dac_serial for lot in first + second for d in lot.devices]
    assert len(used) == 100 and len(set(used)) == 100  # every DAC once
    assert set(used) == {d.serial_hex for d in vendor}  # and only the vendor's
    assert await dac_pool.unused(line.store, PROFILE) == []

    # The device's wrapped key is the vendor's key of that very DAC, bound to the device.
    by_serial = {d.serial_hex: d for d in vendor}
    lot = first[0]
    dev = lot.devices[0]
    assert dev.dac is not None
    stored = lots.unpack(await line.store.get(dev.dac.key))
    (piece,) = [e for e in stored.entries if e.index == dev.index]
    wrapped = piece.meta[lots.DAC_KEY_META]  # the lot carries none: it is in dacs.lot
    raw = line.wrapper.unwrap(wrapped, f"dac-key:{lot.order_id}/{dev.index:07d}")
    assert raw == by_serial[dev.dac_serial].private_key_raw
    # The builder builds it like an issued DAC.
    (image,) = only(await line.builder.handle(lot), IMAGES_READY)[:1]
    assert image.dac_serial == dev.dac_serial

    # A redelivered lot takes the same DACs again (the device's choice is write-once).
    (again,) = only(await line.signer.handle(_allocated_again(line, "IMP-A", 60)), DEVICES_ATTESTED)
    assert [d.dac_serial for d in again.devices] == [d.dac_serial for d in first[0].devices]

    # Nothing left: a third order is rejected, naming the count.
    events = await line.submit(order("IMP-C", 1, dac_source="imported"))
    assert [e.status for e in events] == ["rejected"]
    (err,) = events[0].errors
    assert err.field == "dac_source" and "needs 1" in err.message and "has 0 left" in err.message


def _allocated_again(line: Line, order_id: str, quantity: int):  # type: ignore[no-untyped-def]
    """The first lot of an accepted order, as the allocator sends it on a redelivery."""
    from matterfab.messages import WorkOrder
    from matterfab.services.allocator import allocation

    doc = order(order_id, quantity, dac_source="imported")
    wo = WorkOrder.model_validate({k: v for k, v in doc.items() if k != "type"})
    raw = line.store.objects[f"orders/{order_id}/allocation/00000.json"]
    claim = json.loads(line.store.objects[f"orders/{order_id}/claim.json"])
    lots_ = allocation.lot_messages(wo, 0, json.loads(raw), claim["lot_size"])
    return lots_[0]


async def test_a_bad_pair_refuses_the_whole_batch_naming_it(
    line: Line,
    profile_dir: Path,
    tmp_path: Path,
) -> None:
    vendor = _vendor_dacs(profile_dir, 5)
    certs, keys = _write_pairs(tmp_path, vendor)
    # dac-0003's key file now holds another DAC's key: key and certificate differ.
    (keys / "dac-0003.der").write_bytes(vendor[0].private_key_der)
    with pytest.raises(InvalidInput) as exc:
        _checked(profile_dir, certs, keys)
    assert [e.field for e in exc.value.errors] == ["dac-0003.pem"]
    assert "key does not match the certificate" in exc.value.errors[0].message
    assert await dac_pool.unused(line.store, PROFILE) == []  # nothing stored


async def test_duplicates_across_batches_are_refused(
    line: Line,
    profile_dir: Path,
    tmp_path: Path,
) -> None:
    vendor = _vendor_dacs(profile_dir, 3)
    checked = _checked(profile_dir, *_write_pairs(tmp_path / "a", vendor))
    await dac_pool.import_batch(line.store, line.wrapper, PROFILE, "po-1", checked[:2])
    with pytest.raises(InvalidInput) as exc:
        await dac_pool.import_batch(line.store, line.wrapper, PROFILE, "po-2", checked[1:])
    assert [e.field for e in exc.value.errors] == ["dac-0001.pem"]
    assert "already in the pool" in exc.value.errors[0].message
    assert len(await dac_pool.unused(line.store, PROFILE)) == 2  # po-2 stored nothing
    with pytest.raises(InvalidInput, match="imported already"):
        await dac_pool.import_batch(line.store, line.wrapper, PROFILE, "po-1", checked[2:])
    # Stored keys are wrapped, never in the clear.
    raw = checked[0].key_raw
    assert not any(raw in v or base64.b64encode(raw) in v for v in line.store.objects.values())


def _cert(
    profile_dir: Path,
    *,
    ku: x509.KeyUsage | None = None,
    vid: int = VID,
    pid: int = PID,
    days: tuple[int, int] = (1, 365),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> dac_import.DacPair:
    """A hand-made DAC under the profile's PAI with one thing changed."""
    loaded = profiles.load_profile(PROFILE, profile_dir)
    pai = loaded.require_pai()
    pai_key = loaded.signer()
    assert isinstance(pai_key, attestation.InMemorySigner)
    own = key or ec.generate_private_key(ec.SECP256R1())
    start = pai.not_valid_before_utc  # days count from the PAI's notBefore
    usage = ku or x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "vendor DAC"),
            x509.NameAttribute(attestation.VENDOR_ID_OID, f"{vid:04X}"),
            x509.NameAttribute(attestation.PRODUCT_ID_OID, f"{pid:04X}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(pai.subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start + dt.timedelta(days=days[0]))
        .not_valid_after(start + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(own.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pai_key.public_key()),
            critical=False,
        )
        .sign(pai_key.private_key, hashes.SHA256())
    )
    return dac_import.DacPair("x.pem", cert.public_bytes(serialization.Encoding.DER), own)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"vid": 0xFFF2}, "VendorID"),
        ({"pid": 0x8001}, "ProductID is 0x8001"),
        (
            {"ku": x509.KeyUsage(True, False, True, False, False, False, False, False, False)},
            "keyUsage",
        ),
        ({"days": (0, 1)}, "not valid now"),  # expired
        ({"days": (3, 30)}, "not valid now"),  # not yet valid
    ],
)
def test_each_mfg_tool_rule_refuses_a_pair(
    profile_dir: Path,
    change: dict[str, Any],
    rule: str,
) -> None:
    pai = profiles.load_profile(PROFILE, profile_dir).require_pai()
    now = pai.not_valid_before_utc + dt.timedelta(days=2)
    good = _cert(profile_dir)
    assert dac_import.check_pair(good, pai, VID, PID, now).fingerprint
    with pytest.raises(AttestationError, match=rule):
        dac_import.check_pair(_cert(profile_dir, **change), pai, VID, PID, now)


def test_a_dac_of_another_pai_does_not_chain(profile_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    profiles.init_test_profile(PROFILE, VID, PID, profiles_dir=other)
    foreign = _vendor_dacs(other, 1)[0]
    key = serialization.load_der_private_key(foreign.private_key_der, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pair = dac_import.DacPair("foreign.pem", foreign.der, key)
    pai = profiles.load_profile(PROFILE, profile_dir).require_pai()
    with pytest.raises(AttestationError, match="PAI"):
        dac_import.check_pair(pair, pai, VID, PID)
