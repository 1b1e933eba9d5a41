"""dac_storage end to end on the real broker and S3: one order per mode, fetched and verified.

factory-nvs (the default) keeps today's objects; secure-cert adds a per-device
esp_secure_cert.bin (the DAC, PAI and key leave the NVS partition); on-module issues no DAC at
all (a CD-only profile made by `matterfab pki add-cd`), so no dac.der and no ledger entry.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography import x509

from matterfab.matter import nvs_reader, secure_cert
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import Services, matterfab, work_order, write_order
from tests.reliability.harness import read_topic

pytestmark = pytest.mark.timeout(600)

QUANTITY = {"factory-nvs": 5, "secure-cert": 12, "on-module": 8}
ORDER_ID = {mode: f"E2E-DS-{mode}" for mode in QUANTITY}
CD_ONLY = "e2e-cd-only-fff1"
DAC_KEYS = {"dac-cert", "dac-key", "dac-pub-key", "pai-cert"}


@pytest.fixture(scope="module")
def orders(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Submit the three orders (waiting for each), fetch each; mode -> fetched folder."""
    made = matterfab(stack, "pki", "add-cd", CD_ONLY, "--vid", "0xFFF1", "--pid", "0x8000")
    assert made.returncode == 0, made.stdout + made.stderr
    tmp = tmp_path_factory.mktemp("dac-storage")
    fetched = {}
    for mode, quantity in QUANTITY.items():
        name = CD_ONLY if mode == "on-module" else profile
        order = work_order(ORDER_ID[mode], quantity, name, dac_storage=mode)
        done = matterfab(
            stack, "order", "submit", str(write_order(tmp, order)), "--wait", "--timeout", "300"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = tmp / mode
        got = matterfab(stack, "order", "fetch", ORDER_ID[mode], "--out", str(out))
        assert got.returncode == 0, got.stdout + got.stderr
        fetched[mode] = out
    return fetched


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", list(QUANTITY))
def test_fetched_files_per_mode(orders: dict[str, Path], mode: str) -> None:
    folder = orders[mode]
    manifest = rows(folder)
    assert len(manifest) == QUANTITY[mode]
    doc = json.loads((folder / "manifest.json").read_text())
    assert doc["dac_storage"] == mode
    for row, entry in zip(manifest, doc["devices"], strict=True):
        device = folder / "devices" / row["index"]
        files = {p.name for p in device.iterdir()}
        assert {"partition.bin", "qrcode.png", "onboarding.json"} <= files
        assert ("dac.der" in files) == (mode != "on-module")
        assert ("esp_secure_cert.bin" in files) == (mode == "secure-cert")
        keys = set(
            nvs_reader.decode_partition((device / "partition.bin").read_bytes())["chip-factory"]
        )
        assert (DAC_KEYS <= keys) if mode == "factory-nvs" else not (DAC_KEYS & keys)
        if mode != "secure-cert":
            assert row["secure_cert_key"] == row["secure_cert_sha256"] == ""
            assert "secure_cert" not in entry["objects"]
            continue
        image = (device / "esp_secure_cert.bin").read_bytes()
        assert hashlib.sha256(image).hexdigest() == row["secure_cert_sha256"]
        # A piece of the lot's images.lot, after the device's partition (issue #26).
        ref = entry["objects"]["secure_cert"]
        assert row["secure_cert_key"] == ref["key"] == entry["objects"]["partition"]["key"]
        assert ref["key"].endswith("/images.lot") and ref["offset"] > 0
        # manifest.csv gives the file's digest; the refs, the sealed object's and the file's.
        plain = entry["objects"]["secure_cert"]["sealed"]["sha256"]
        assert plain == row["secure_cert_sha256"]
        onboarding = json.loads((device / "onboarding.json").read_text())
        assert onboarding["objects"]["secure_cert"]["sealed"]["sha256"] == plain
        read = secure_cert.read_secure_cert(image)
        assert read.dac_cert == (device / "dac.der").read_bytes()
        dac = x509.load_der_x509_certificate(read.dac_cert)
        assert f"{dac.serial_number:x}".lstrip("0") == row["dac_serial"].lstrip("0")
    if mode == "on-module":
        assert {r["dac_serial"] for r in manifest} == {""}


@pytest.mark.parametrize("mode", list(QUANTITY))
def test_verify_passes(stack: LocalStack, orders: dict[str, Path], mode: str) -> None:
    done = matterfab(stack, "verify", ORDER_ID[mode])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every artifact verified" in done.stdout


async def test_verify_catches_a_swapped_secure_cert(
    stack: LocalStack, store: ObjectStore, orders: dict[str, Path], tmp_path: Path
) -> None:
    """verify reads the secure cert itself: one device's file in another's place is caught
    (sealed for the other device: its header names it, and it would not open here)."""
    order_id = "E2E-DS-SWAP"
    order = work_order(order_id, 2, "e2e-fff1", dac_storage="secure-cert")
    done = matterfab(
        stack, "order", "submit", str(write_order(tmp_path, order)), "--wait", "--timeout", "300"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(await store.get(f"orders/{order_id}/manifest.json"))
    first, second = (d["objects"]["secure_cert"] for d in doc["devices"])
    # Rewrite the manifest so device 0 points at device 1's file with a matching digest.
    doc["devices"][0]["objects"]["secure_cert"] = second
    await store.put(f"orders/{order_id}/manifest.json", json.dumps(doc).encode())
    found = matterfab(stack, "verify", order_id)
    assert found.returncode == 1
    said = " ".join(found.stdout.split())  # verify's lines wrap at the console's width
    assert (
        f"{order_id}/0000000: esp_secure_cert.bin: sealed for device {order_id}/0000001, "
        f"not {order_id}/0000000"
    ) in said
    assert first != second


async def test_ledger_has_dacs_only_for_issuing_modes(
    stack: LocalStack, store: ObjectStore, orders: dict[str, Path]
) -> None:
    # Every ledger entry was sent before its device reached the builder, so before completion.
    deadline = time.monotonic() + 30
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        records = await read_topic(stack.kafka_settings(), "mfg.dac-ledger")
        entries = [json.loads(r.value) for r in records]  # one record per lot, its DACs listed
        counts = {
            m: len(
                {
                    d["device_id"]
                    for e in entries
                    if e.get("order_id") == ORDER_ID[m]
                    for d in e["dacs"]
                }
            )
            for m in QUANTITY
        }
        if counts["factory-nvs"] == QUANTITY["factory-nvs"]:
            break
        await asyncio.sleep(0.5)
    assert counts == {"factory-nvs": 5, "secure-cert": 12, "on-module": 0}
    # Where DACs rest: a dacs.lot per lot in issuing modes, none at all on-module.
    for mode in QUANTITY:
        keys = await store.list_keys(f"orders/{ORDER_ID[mode]}/lots/")
        assert any(k.endswith("/dacs.lot") for k in keys) == (mode != "on-module"), keys
