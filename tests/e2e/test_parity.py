"""Issue #24's parity features on the real broker and S3, through the CLI and every service.

`matterfab dac import` brings 10 vendor DACs (one PEM file of certificates, one of keys) into
the test profile; an order of 6 takes them with device-information lists, NFC/Thread discovery
and commissionable data in esp_secure_cert; an order of 5 more is then rejected naming the
count; a dynamic-passcode order completes without codes. Each completed order is fetched and
`matterfab verify` passes.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matterfab import profiles
from matterfab.matter import attestation, nvs_reader, payload, secure_cert
from matterfab.stack import LocalStack
from tests.pipeline import Services, matterfab, work_order, write_order

pytestmark = pytest.mark.timeout(600)

DEVICE_INFO = {
    "calendar_types": ["gregorian", "japanese"],
    "locales": ["en-US", "ja-JP"],
    "fixed_labels": [{"endpoint": 1, "label": "room", "value": "hall"}],
    "supported_modes": [{"endpoint": 1, "label": "Eco", "mode": 2, "tags": []}],
}


@pytest.fixture(scope="module")
def vendor_serials(stack: LocalStack, profile: str, tmp_path_factory: pytest.TempPathFactory):
    """Import 10 DACs issued under the profile's PAI, as a PKI vendor would deliver them."""
    shown = matterfab(stack, "pki", "show", profile)
    assert shown.returncode == 0, shown.stderr
    folder = Path(shown.stdout.strip().splitlines()[0].split()[-1])
    loaded = profiles.load_profile(profile, folder.parent)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dacs = [
        attestation.issue_dac(
            pai_cert=loaded.require_pai(),
            signer=loaded.signer(),
            vendor_id=0xFFF1,
            product_id=0x8000,
            not_before=now - dt.timedelta(hours=1),
            not_after=now + dt.timedelta(days=365),
        )
        for _ in range(10)
    ]
    tmp = tmp_path_factory.mktemp("vendor")
    (tmp / "certs.pem").write_bytes(
        b"".join(d.certificate.public_bytes(serialization.Encoding.PEM) for d in dacs)
    )
    (tmp / "keys.pem").write_bytes(
        b"".join(
            serialization.load_der_private_key(d.private_key_der, None).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for d in dacs
        )
    )
    args = [
        "--profile",
        profile,
        "--certs",
        str(tmp / "certs.pem"),
        "--keys",
        str(tmp / "keys.pem"),
    ]
    done = matterfab(stack, "dac", "import", "po-e2e", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 10 DACs" in done.stdout
    again = matterfab(stack, "dac", "import", "po-e2e-2", *args)  # the same DACs again
    assert again.returncode == 2 and "already in the pool" in again.stderr
    return {d.serial_hex for d in dacs}


def _submit(stack: LocalStack, tmp: Path, order: dict) -> tuple[int, str]:  # type: ignore[type-arg]
    done = matterfab(
        stack, "order", "submit", str(write_order(tmp, order)), "--wait", "--timeout", "300"
    )
    return done.returncode, done.stdout + done.stderr


def _fetch_and_verify(stack: LocalStack, order_id: str, out: Path) -> list[dict[str, str]]:
    got = matterfab(stack, "order", "fetch", order_id, "--out", str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    checked = matterfab(stack, "verify", order_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_imported_dacs_device_info_and_secure_cert_order(
    stack: LocalStack,
    pipeline: Services,
    profile: str,
    vendor_serials: set[str],
    tmp_path: Path,
) -> None:
    product = work_order("x", 1, profile)["product"] | DEVICE_INFO
    order = work_order(
        "E2E-PAR-A",
        6,
        profile,
        product=product,
        dac_source="imported",
        dac_storage="secure-cert",
        commissioning={
            "iteration_count": 1000,
            "rotating_device_id": True,
            "discovery": ["ble", "nfc", "thread"],
        },
        secure_cert={"commissionable_data": True, "rd_id_uid": True},
    )
    rc, text = _submit(stack, tmp_path, order)
    assert rc == 0, text
    rows = _fetch_and_verify(stack, "E2E-PAR-A", tmp_path / "a")
    assert {r["dac_serial"] for r in rows} <= vendor_serials and len(rows) == 6
    assert len({r["dac_serial"] for r in rows}) == 6
    device = tmp_path / "a" / "devices" / rows[0]["index"]
    factory = nvs_reader.decode_partition((device / "partition.bin").read_bytes())["chip-factory"]
    assert factory["cal-types"] == ("u32", (1 << 4) | (1 << 8))
    assert "discriminator" not in factory and "rd-id-uid" not in factory
    read = secure_cert.read_secure_cert((device / "esp_secure_cert.bin").read_bytes())
    assert [e.subtype for e in read.matter] == [0, 1, 2, 3, 4]
    assert x509.load_der_x509_certificate(read.dac_cert) == x509.load_der_x509_certificate(
        (device / "dac.der").read_bytes()
    )
    assert payload.decode_qr(rows[0]["qr_payload"]).discovery == 0b110010

    # 4 imported DACs remain: an order of 5 is rejected, naming the count.
    rc, text = _submit(stack, tmp_path, work_order("E2E-PAR-B", 5, profile, dac_source="imported"))
    assert rc == 2, text
    text = " ".join(text.split())  # the console wraps long lines
    assert "needs 5 unused imported DACs" in text and "has 4 left" in text


def test_dynamic_passcode_order(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    commissioning = {"iteration_count": 1000, "dynamic_passcode": True}
    rc, text = _submit(
        stack, tmp_path, work_order("E2E-PAR-C", 3, profile, commissioning=commissioning)
    )
    assert rc == 0, text
    rows = _fetch_and_verify(stack, "E2E-PAR-C", tmp_path / "c")
    assert {(r["passcode"], r["qr_payload"], r["manual_code"]) for r in rows} == {
        ("dynamic", "dynamic", "dynamic")
    }
    factory = nvs_reader.decode_partition(
        (tmp_path / "c" / "devices" / rows[0]["index"] / "partition.bin").read_bytes()
    )["chip-factory"]
    assert "verifier" not in factory and "salt" in factory
