"""Firmware bundles end to end: `firmware add`, orders naming a bundle, whole-module flashing.

A bundle of small fake binaries and a partition table written by ESP-IDF's gen_esp32part
(`tests/data/partition_tables`) is registered with the CLI; a station runs a flash command
that is a real subprocess recording the argv it got and the sha256 of every file it was handed
(the fake stands in for esptool, which would need a chip). Bad bundles are rejected by the
allocator with field errors, and nothing accepted before changes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from matterfab import firmware
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.e2e.test_stations import Stations, complete_bindings, stations, submit
from tests.pipeline import matterfab, work_order, write_order

__all__ = ["stations"]  # the fixture, shared with test_stations
pytestmark = pytest.mark.timeout(600)

TABLES = Path(__file__).resolve().parents[1] / "data" / "partition_tables"

# Records argv and, for every `offset file` pair after `write-flash`, the file's sha256 and
# size (the files live in a temporary folder that the station removes after the command).
FAKE_ESPTOOL = """
import hashlib, json, pathlib, sys
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--record") + 1])
pairs = args[args.index("write-flash") + 1 :]
files = []
for offset, path in zip(pairs[0::2], pairs[1::2]):
    data = pathlib.Path(path).read_bytes()
    files.append([offset, pathlib.Path(path).name, hashlib.sha256(data).hexdigest(), len(data)])
device = args[args.index("--device") + 1].replace("/", "_")
(out / (device + ".json")).write_text(json.dumps({"argv": args, "files": files}))
mac = hashlib.sha256(device.encode()).digest()[:6]
print("Chip is ESP32-C3")
print("MAC: " + ":".join(f"{b:02X}" for b in mac))
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def binaries(tmp: Path, tag: str) -> dict[str, Path]:
    """Fake bootloader, app and extra files (distinct per tag) and a real table binary."""
    files = {
        "bootloader": b"\xe9\x03\x02\x20" + tag.encode() * 300,
        "app": b"\xe9\x06\x02\x20" + tag.encode() * 5000,
        "extra": b"EXTRA-" + tag.encode(),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp / f"{tag}-{name}.bin"
        out[name].write_bytes(data)
    return out


def add(stack: LocalStack, name: str, table: Path, bins: dict[str, Path], *more: str) -> Any:
    return matterfab(
        stack,
        "firmware",
        "add",
        name,
        "--chip",
        "esp32c3",
        "--bootloader",
        str(bins["bootloader"]),
        "--partition-table",
        str(table),
        "--app",
        str(bins["app"]),
        *more,
    )


async def test_firmware_add_rules(stack: LocalStack, store: ObjectStore, tmp_path: Path) -> None:
    bins = binaries(tmp_path, "rules")
    table = TABLES / "matter.bin"
    done = add(stack, "E2E-RULES", table, bins)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0x020000" in done.stdout and "app.bin" in done.stdout
    body = await store.get(firmware.bundle_key("E2E-RULES"))
    again = add(stack, "E2E-RULES", table, bins)
    assert again.returncode == 0 and "already registered (identical)" in again.stdout
    bins["app"].write_bytes(b"\xe9 another app")
    other = add(stack, "E2E-RULES", table, bins)
    assert other.returncode == 2 and "error: name: firmware bundle 'E2E-RULES' already" in (
        other.stderr
    )
    assert await store.get(firmware.bundle_key("E2E-RULES")) == body  # write-once
    bad = tmp_path / "bad-md5.bin"
    raw = bytearray(table.read_bytes())
    raw[0x28] ^= 1
    bad.write_bytes(bytes(raw))
    refused = add(stack, "E2E-BADMD5", bad, bins, "--extra", "0x3E1000=" + str(bins["extra"]))
    assert refused.returncode == 2
    assert "error: partition_table: row 8 (byte 0x100): MD5 row does not match" in refused.stderr
    assert not await store.exists(firmware.bundle_key("E2E-BADMD5"))
    overlap = add(stack, "E2E-OVERLAP", table, bins, "--extra", "0x3E1000=" + str(bins["extra"]))
    assert overlap.returncode == 2 and "overlaps partition 'fctry'" in overlap.stderr
    shown = matterfab(stack, "firmware", "show", "E2E-RULES")
    assert shown.returncode == 0 and json.loads(shown.stdout.split("\n# ")[0])["chip"] == "esp32c3"
    listed = matterfab(stack, "firmware", "list")
    assert "E2E-RULES" in listed.stdout.split()


async def test_station_flashes_whole_modules_in_flash_order(
    stack: LocalStack,
    store: ObjectStore,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    bins = binaries(tmp_path, "light")
    table = TABLES / "matter.bin"
    extra = "0x3F0000=" + str(bins["extra"])
    done = add(stack, "E2E-LIGHT", table, bins, "--extra", extra)
    assert done.returncode == 0, done.stdout + done.stderr

    # A command station (fake esptool) for a secure-cert order, a folder station with
    # --merged for a factory-nvs order: each on its own line.
    fake = tmp_path / "fake_esptool.py"
    fake.write_text(FAKE_ESPTOOL)
    record = tmp_path / "record"
    record.mkdir()
    template = (
        f"{sys.executable} {fake} --record {record} --device {{device_id}} "
        "--chip {chip} -p {port} write-flash {flash_args}"
    )
    stations.start("fw-cmd", "line-fw-cmd", "FW-CMD", "--flash-cmd", template, "--port", "/dev/x")
    out = tmp_path / "merged"
    stations.start("fw-dir", "line-fw-dir", "FW-DIR", "--out", str(out), "--merged")
    stations.wait_assigned(["fw-cmd"])
    stations.wait_assigned(["fw-dir"])
    submit(
        stack,
        tmp_path,
        work_order(
            "FW-CMD",
            3,
            profile,
            firmware="E2E-LIGHT",
            dac_storage="secure-cert",
            line="line-fw-cmd",
        ),
    )
    submit(
        stack, tmp_path, work_order("FW-DIR", 2, profile, firmware="E2E-LIGHT", line="line-fw-dir")
    )
    await complete_bindings(store, "FW-CMD", 3)
    await complete_bindings(store, "FW-DIR", 2)

    manifest = json.loads(await store.get("orders/FW-CMD/manifest.json"))
    bundle_json = await store.get(firmware.bundle_key("E2E-LIGHT"))
    assert manifest["firmware"] == {"name": "E2E-LIGHT", "sha256": sha(bundle_json)}
    local = {k: sha(p.read_bytes()) for k, p in bins.items()}
    table_sha = sha(table.read_bytes())
    for device in manifest["devices"]:
        got = json.loads((record / (device["device_id"].replace("/", "_") + ".json")).read_text())
        assert got["argv"][got["argv"].index("--chip") + 1] == "esp32c3"
        assert got["files"] == [
            ["0x0", "bootloader.bin", local["bootloader"], bins["bootloader"].stat().st_size],
            ["0x8000", "partition-table.bin", table_sha, 3072],
            ["0x20000", "app.bin", local["app"], bins["app"].stat().st_size],
            ["0x3F0000", "extra-0x3F0000.bin", local["extra"], bins["extra"].stat().st_size],
            [
                "0xD000",
                "esp_secure_cert.bin",
                device["secure_cert_sha256"],
                device["objects"]["secure_cert"]["sealed"]["size"],  # the file's, not sealed
            ],
            ["0x3E0000", "partition.bin", device["partition_sha256"], 0x6000],
        ]

    merged_manifest = json.loads(await store.get("orders/FW-DIR/manifest.json"))
    assert merged_manifest["firmware"]["sha256"] == sha(bundle_json)
    for device in merged_manifest["devices"]:
        folder = out / "FW-DIR" / device["index"]
        lines = (folder / "flash_args").read_text().splitlines()
        assert lines == [
            "0x0 bootloader.bin",
            "0x8000 partition-table.bin",
            "0x20000 app.bin",
            "0x3F0000 extra-0x3F0000.bin",
            "0x3E0000 partition.bin",
        ]
        merged = (folder / "merged.bin").read_bytes()
        for line in lines:
            offset, name = line.split()
            data = (folder / name).read_bytes()
            start = int(offset, 16)
            assert merged[start : start + len(data)] == data, name
        assert sha((folder / "partition.bin").read_bytes()) == device["partition_sha256"]
        assert merged[0xD000:0xF000] == b"\xff" * 0x2000  # factory-nvs: no secure cert
        assert len(merged) == 0x3F0000 + bins["extra"].stat().st_size


async def test_bad_bundles_are_rejected_and_change_nothing(
    stack: LocalStack, store: ObjectStore, pipeline: Any, profile: str, tmp_path: Path
) -> None:
    bins = binaries(tmp_path, "bad")
    for name, table in [
        ("E2E-GOOD", "matter"),
        ("E2E-PLAIN", "factory_app"),
        ("E2E-NOFCTRY", "no_fctry"),
        ("E2E-SMALLCERT", "small_secure_cert"),
        ("E2E-ROT", "matter"),
    ]:
        done = add(stack, name, TABLES / f"{table}.bin", bins)
        assert done.returncode == 0, done.stdout + done.stderr
    submit(stack, tmp_path, work_order("FW-OK", 2, profile, firmware="E2E-GOOD"))
    before = {
        key: await store.get(key)
        for key in await store.list_keys("orders/FW-OK/") + await store.list_keys("firmware/")
    }
    # Bit rot in the bucket: E2E-ROT's app no longer matches its bundle.json.
    await store.put(firmware.bundle_key("E2E-ROT", "app.bin"), b"\xe9 rotten")

    cases: list[tuple[dict[str, Any], str]] = [
        ({"firmware": "E2E-GHOST"}, "firmware: unknown firmware bundle 'E2E-GHOST'"),
        ({"firmware": "E2E-NOFCTRY"}, "firmware: bundle 'E2E-NOFCTRY' has no factory partition"),
        (
            {"firmware": "E2E-GOOD", "partition": {"size": 0x5000}},
            "partition.size: must equal 0x6000, the size of factory partition 'fctry' in "
            "bundle 'E2E-GOOD' (is 0x5000)",
        ),
        (
            {"firmware": "E2E-PLAIN", "dac_storage": "secure-cert"},
            "firmware: bundle 'E2E-PLAIN' has no 'esp_secure_cert' partition",
        ),
        (
            {"firmware": "E2E-SMALLCERT", "dac_storage": "secure-cert"},
            "is smaller than the esp_secure_cert image (0x2000 bytes)",
        ),
        ({"firmware": "E2E-ROT"}, "firmware: bundle 'E2E-ROT': file app.bin has sha256"),
    ]
    for n, (overrides, error) in enumerate(cases):
        order_id = f"FW-BAD-{n}"
        path = write_order(tmp_path, work_order(order_id, 2, profile, **overrides))
        done = matterfab(stack, "order", "submit", str(path), "--wait", "--timeout", "120")
        assert done.returncode == 2, done.stdout + done.stderr
        said = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
        assert error in said, said
        assert await store.list_keys(f"orders/{order_id}/") == []
    after = await store.list_keys("orders/FW-OK/")
    assert sorted(after) == sorted(k for k in before if k.startswith("orders/"))
    for key, data in before.items():
        if key != firmware.bundle_key("E2E-ROT", "app.bin"):
            assert await store.get(key) == data, key
