"""End to end on the real broker and S3: work order in, verified images and manifest out."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.chip_sdk import chip_setup_payload
from tests.pipeline import Services, matterfab, work_order, write_order

pytestmark = pytest.mark.timeout(600)

MANIFEST_HEADER = (
    "index,device_id,serial_num,vendor_id,product_id,discriminator,passcode,"
    "qr_payload,manual_code,rd_id_uid,dac_serial,partition_key,partition_sha256,"
    "secure_cert_key,secure_cert_sha256"
)


async def manifest_rows(store: ObjectStore, order_id: str) -> list[dict[str, str]]:
    raw = await store.get(f"orders/{order_id}/manifest.csv")
    assert raw.decode().splitlines()[0] == MANIFEST_HEADER
    return list(csv.DictReader(io.StringIO(raw.decode())))


def submit(
    stack: LocalStack, tmp_path: Path, order: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return matterfab(
        stack, "order", "submit", str(write_order(tmp_path, order)), "--wait", "--timeout", "300"
    )


@pytest.fixture(scope="module")
def order_100(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    order = work_order(
        "E2E-100",
        100,
        profile,
        commissioning={
            "iteration_count": 10000,
            "rotating_device_id": True,
            "discovery": ["ble", "on-network"],
        },
    )
    done = submit(stack, tmp_path_factory.mktemp("orders"), order)
    assert done.returncode == 0, done.stdout + done.stderr
    return "E2E-100"


async def test_order_of_100_completes_with_every_object(store: ObjectStore, order_100: str) -> None:
    rows = await manifest_rows(store, order_100)
    assert len(rows) == 100
    assert [r["index"] for r in rows] == [f"{i:07d}" for i in range(100)]
    doc = json.loads(await store.get(f"orders/{order_100}/manifest.json"))
    import hashlib

    for row in doc["devices"]:
        assert set(row["objects"]) >= {"partition", "qrcode", "onboarding", "dac"}
        for ref in row["objects"].values():
            data = await store.get(ref["key"])
            assert hashlib.sha256(data).hexdigest() == ref["sha256"]
            assert len(data) == ref["size"]
    for field in ("serial_num", "dac_serial", "rd_id_uid"):
        assert len({r[field] for r in rows}) == 100, field


def test_verify_passes(stack: LocalStack, order_100: str) -> None:
    done = matterfab(stack, "verify", order_100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every artifact verified" in done.stdout


async def test_codes_parse_with_the_matter_sdk(store: ObjectStore, order_100: str) -> None:
    with chip_setup_payload() as sdk:
        for row in await manifest_rows(store, order_100):
            _check_row_with_sdk(sdk, row)


def _check_row_with_sdk(sdk: Any, row: dict[str, str]) -> None:
    qr = sdk.ParseQrCode(row["qr_payload"])
    assert (qr.vendor_id, qr.product_id) == (0xFFF1, 0x8000)
    assert qr.long_discriminator == int(row["discriminator"])
    assert qr.setup_passcode == int(row["passcode"])
    manual = sdk.ParseManualPairingCode(row["manual_code"])
    assert manual.setup_passcode == int(row["passcode"])
    assert manual.short_discriminator == int(row["discriminator"]) >> 8


async def test_each_dac_chains_to_the_profile_paa(
    stack: LocalStack, store: ObjectStore, order_100: str, tmp_path: Path
) -> None:
    shown = matterfab(stack, "pki", "show", "e2e-fff1")
    profile_dir = Path(shown.stdout.splitlines()[0].strip())
    paa = profile_dir / "paa.pem"
    pai = profile_dir / "pai.pem"
    assert paa.exists() and pai.exists()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    for row in await manifest_rows(store, order_100):
        der = await store.get(f"orders/{order_100}/devices/{row['index']}/dac.der")
        pem = tmp_path / f"{row['index']}.pem"
        pem.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
        res = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-CAfile",
                str(paa),
                "-untrusted",
                str(pai),
                str(pem),
            ],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout + res.stderr


def test_two_builders_both_worked(pipeline: Services, order_100: str) -> None:
    for name in ("builder-1", "builder-2"):
        handled = [
            json.loads(line)
            for line in pipeline.log(name).splitlines()
            if '"batch handled"' in line
        ]
        assert sum(h["count"] for h in handled) > 0, f"{name} built nothing"


async def test_same_order_twice_yields_one_set(
    stack: LocalStack, store: ObjectStore, order_100: str, tmp_path: Path
) -> None:
    before = await manifest_rows(store, order_100)
    order = work_order(
        order_100,
        100,
        "e2e-fff1",
        commissioning={
            "iteration_count": 10000,
            "rotating_device_id": True,
            "discovery": ["ble", "on-network"],
        },
    )
    done = submit(stack, tmp_path, order)
    assert done.returncode == 0, done.stdout + done.stderr
    keys = await store.list_keys(f"orders/{order_100}/devices/")
    assert len([k for k in keys if k.endswith("/partition.bin")]) == 100
    assert await manifest_rows(store, order_100) == before


async def test_two_orders_share_no_serial(
    stack: LocalStack, store: ObjectStore, order_100: str, tmp_path: Path
) -> None:
    done = submit(stack, tmp_path, work_order("E2E-SECOND", 20, "e2e-fff1"))
    assert done.returncode == 0, done.stdout + done.stderr
    first = {r["serial_num"] for r in await manifest_rows(store, order_100)}
    second = {r["serial_num"] for r in await manifest_rows(store, "E2E-SECOND")}
    assert len(second) == 20
    assert not first & second


async def test_rejected_order_lists_every_error_and_services_go_on(
    stack: LocalStack, store: ObjectStore, pipeline: Services, tmp_path: Path
) -> None:
    bad = work_order("E2E-BAD", 0, "no-such-profile")
    done = submit(stack, tmp_path, bad)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "quantity" in done.stderr and "attestation_profile" in done.stderr
    assert "unknown attestation profile" in done.stderr
    assert not await store.exists("orders/E2E-BAD/order.json")
    done = submit(stack, tmp_path, work_order("E2E-AFTER-BAD", 5, "e2e-fff1"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_fetch_writes_every_artifact(stack: LocalStack, order_100: str, tmp_path: Path) -> None:
    out = tmp_path / "fetched"
    done = matterfab(stack, "order", "fetch", order_100, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("manifest.csv", "manifest.json", "qrcodes.zip"):
        assert (out / name).is_file()
    for i in (0, 99):
        folder = out / "devices" / f"{i:07d}"
        for name in ("partition.bin", "qrcode.png", "onboarding.json", "dac.der"):
            assert (folder / name).is_file(), folder / name
