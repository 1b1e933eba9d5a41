"""End to end on the real broker and S3: work order in, verified images and manifest out."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from matterfab import lots
from matterfab.refs import RefReader
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.chip_sdk import chip_setup_payload
from tests.e2e.conftest import LOT_MAX_DEVICES
from tests.pipeline import (
    Services,
    device_objects,
    manifest_doc,
    matterfab,
    work_order,
    write_order,
)

pytestmark = pytest.mark.timeout(600)

LOT_SIZE = lots.lot_size(10_000, max_devices=LOT_MAX_DEVICES)  # these orders' devices a lot

MANIFEST_HEADER = (
    "index,device_id,serial_num,vendor_id,product_id,discriminator,passcode,"
    "qr_payload,manual_code,rd_id_uid,dac_serial,partition_key,partition_sha256,"
    "secure_cert_key,secure_cert_sha256"
)


async def manifest_rows(store: ObjectStore, order_id: str) -> list[dict[str, str]]:
    raw = await store.get(f"orders/{order_id}/manifest.csv")
    # The 15 fixed columns first; new per-device columns (line, …) follow (DESIGN §5).
    assert raw.decode().splitlines()[0].startswith(MANIFEST_HEADER + ",")
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
    doc = await manifest_doc(store, order_100)
    reader = RefReader(store)
    for row in doc["devices"]:
        assert set(row["objects"]) >= {"partition", "qrcode", "onboarding", "dac"}
        for ref in row["objects"].values():
            data = await reader.read(ref)  # a lot's piece is cut out; every read sha256-checked
            assert hashlib.sha256(data).hexdigest() == ref["sha256"]
            assert len(data) == ref["size"]
        onboarding = json.loads(await reader.read(row["objects"]["onboarding"]))
        assert onboarding["objects"] == {
            k: v for k, v in row["objects"].items() if k != "onboarding"
        }
    for field in ("serial_num", "dac_serial", "rd_id_uid"):
        assert len({r[field] for r in rows}) == 100, field


async def test_every_device_file_is_a_piece_of_a_lot_object(
    store: ObjectStore, order_100: str
) -> None:
    """DESIGN §5 Lots: DACs, QR codes, onboarding records and (issue #26) the sealed partitions
    are pieces of per-lot objects, and the manifest gives each one's byte range."""
    keys = await store.list_keys(f"orders/{order_100}/")
    assert not [k for k in keys if "/devices/" in k]
    lot_keys = sorted(k for k in keys if "/lots/" in k)
    firsts = sorted({k.split("/")[3] for k in lot_keys})
    size = LOT_SIZE  # the order's iteration count, the e2e allocator's lot settings
    assert firsts == [f"{i:07d}" for i in range(0, 100, size)]
    assert lot_keys == sorted(
        lots.lot_key(order_100, int(f), name)
        for f in firsts
        for name in (lots.DACS, lots.IMAGES, lots.LABELS)
    )
    doc = await manifest_doc(store, order_100)
    for row in doc["devices"]:
        first = int(row["index"]) // size * size
        objects = row["objects"]
        # A piece of images.lot, sealed on its own to the order's line (docs/secrets.md).
        assert objects["partition"]["key"] == lots.lot_key(order_100, first, lots.IMAGES)
        assert set(objects["partition"]) == {"key", "sha256", "size", "offset", "sealed"}
        for name, lot in (("dac", lots.DACS), ("qrcode", lots.LABELS), ("onboarding", lots.LABELS)):
            assert objects[name]["key"] == lots.lot_key(order_100, first, lot)
            assert set(objects[name]) == {"key", "sha256", "size", "offset"}


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

    dacs = await device_objects(store, order_100, "dac")
    assert len(dacs) == 100
    for index, der in dacs.items():
        pem = tmp_path / f"{index}.pem"
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
    assert len(await device_objects(store, order_100, "partition")) == 100
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


async def test_fetch_writes_every_artifact(
    stack: LocalStack, store: ObjectStore, order_100: str, tmp_path: Path
) -> None:
    out = tmp_path / "fetched"
    done = matterfab(stack, "order", "fetch", order_100, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("manifest.csv", "manifest.json", "qrcodes.zip"):
        assert (out / name).is_file()
    assert (out / "manifest.json").read_bytes() == await store.get(
        f"orders/{order_100}/manifest.json"
    )
    folders = sorted(p.name for p in (out / "devices").iterdir())
    assert folders == [f"{i:07d}" for i in range(100)]
    files = {"partition": "partition.bin", "qrcode": "qrcode.png", "onboarding": "onboarding.json"}
    for name, file in {**files, "dac": "dac.der"}.items():
        for index, data in (await device_objects(store, order_100, name)).items():
            assert (out / "devices" / index / file).read_bytes() == data, (index, file)
    for folder in (out / "devices").iterdir():
        assert sorted(p.name for p in folder.iterdir()) == sorted([*files.values(), "dac.der"])
    qr = zipfile.ZipFile(out / "qrcodes.zip")
    row = (await manifest_rows(store, order_100))[7]
    assert (
        qr.read(f"{row['serial_num']}.png")
        == (out / "devices" / row["index"] / "qrcode.png").read_bytes()
    )


@pytest.fixture(scope="module")
def two_lots(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An order of two lots (10,000 iterations: LOT_SIZE devices a lot), for tampering with."""
    order = work_order("E2E-LOTS", LOT_SIZE + 9, profile, commissioning={"iteration_count": 10000})
    done = submit(stack, tmp_path_factory.mktemp("lots"), order)
    assert done.returncode == 0, done.stdout + done.stderr
    return "E2E-LOTS"


async def test_verify_and_fetch_report_a_swapped_lot(
    stack: LocalStack, store: ObjectStore, two_lots: str, tmp_path: Path
) -> None:
    first, second = (lots.lot_key(two_lots, f, lots.LABELS) for f in (0, LOT_SIZE))
    original = await store.get(first)
    await store.put(first, await store.get(second))  # the second lot's labels in the first's place
    try:
        found = matterfab(stack, "verify", two_lots)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "Traceback" not in found.stdout + found.stderr
        said = " ".join(found.stdout.split())  # verify's lines wrap at the console's width
        assert f"{first}: holds no qrcode.png of {two_lots}/0000000, which manifest.json" in said
        fetched = matterfab(stack, "order", "fetch", two_lots, "--out", str(tmp_path / "out"))
        assert fetched.returncode == 1
        (line,) = [x for x in fetched.stderr.splitlines() if x.startswith("error:")]
        assert f"({first} bytes " in line and "sha256 does not match manifest.json" in line, line
        assert "Traceback" not in fetched.stderr
    finally:
        await store.put(first, original)
    assert matterfab(stack, "verify", two_lots).returncode == 0


async def test_verify_reports_a_damaged_dacs_lot(
    stack: LocalStack, store: ObjectStore, two_lots: str
) -> None:
    key = lots.lot_key(two_lots, 0, lots.DACS)
    original = await store.get(key)
    await store.put(key, original[:-5])  # the footer cut short
    try:
        found = matterfab(stack, "verify", two_lots)
        assert found.returncode == 1, found.stdout + found.stderr
        assert f"{key}: not a lot object (no footer)" in " ".join(found.stdout.split())
        assert "Traceback" not in found.stdout + found.stderr
    finally:
        await store.put(key, original)
