"""Station pure parts: command templates, MAC parsing, synthetic MACs, settings."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matterfab import firmware
from matterfab.errors import InvalidInput
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.station import flashing
from matterfab.services.station.config import load_settings

ESPTOOL = "esptool.py --port {port} write_flash {offset} {partition}"


def test_render_fills_each_argument() -> None:
    argv = flashing.render_command(
        ESPTOOL, {"port": "/dev/ttyUSB0", "offset": "0x3E0000", "partition": "/tmp/p.bin"}
    )
    assert argv == ["esptool.py", "--port", "/dev/ttyUSB0", "write_flash", "0x3E0000", "/tmp/p.bin"]


def test_values_cannot_inject_arguments() -> None:
    argv = flashing.render_command(
        "flash {serial_num} --id={device_id}", {"serial_num": "a b; rm -rf /", "device_id": "O/1"}
    )
    assert argv == ["flash", "a b; rm -rf /", "--id=O/1"]


def test_quoted_template_arguments_stay_whole() -> None:
    argv = flashing.render_command("sh -c 'flash {partition}'", {"partition": "/p"})
    assert argv == ["sh", "-c", "flash /p"]


@pytest.mark.parametrize(
    ("template", "rule"),
    [
        ("flash {nope}", "unknown placeholder {nope}"),
        ("flash {partition!r}", "must be plain"),
        ("flash {partition:>10}", "must be plain"),
        ("flash {partition", "malformed placeholder"),
        ("flash 'open", "like a shell line"),
        ("   ", "must name a command"),
    ],
)
def test_bad_templates_name_the_rule(template: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.check_template(template)
    assert exc.value.field == "flash_cmd"
    assert rule in str(exc.value)


def test_missing_value_is_named() -> None:
    with pytest.raises(InvalidInput, match=r"\{keys\} has no value"):
        flashing.render_command("flash {partition} {keys}", {"partition": "/p", "keys": None})


ESPTOOL_OUTPUT = """esptool.py v4.7.0
Serial port /dev/ttyUSB0
Chip is ESP32-C3 (QFN32) (revision v0.4)
MAC: 24:0A:C4:12:34:56
Uploading stub...
Hash of data verified.
"""


def test_default_pattern_reads_esptool_mac() -> None:
    pattern = flashing.compile_mac_pattern(flashing.DEFAULT_MAC_PATTERN)
    assert flashing.parse_mac(ESPTOOL_OUTPUT, pattern) == "24:0a:c4:12:34:56"


def test_absent_mac_is_none() -> None:
    pattern = flashing.compile_mac_pattern(flashing.DEFAULT_MAC_PATTERN)
    assert flashing.parse_mac("Hash of data verified.", pattern) is None


@pytest.mark.parametrize(
    ("pattern", "output"),
    [
        (r"mac=(\S+)", "ok mac=24-0a-c4-12-34-56"),  # first group
        (r"(?P<x>id) (?P<mac>[0-9a-f.]+)", "id 240a.c412.3456"),  # named group wins
        (r"[0-9A-F]{12}", "chip 240AC4123456 ok"),  # whole match
    ],
)
def test_custom_patterns(pattern: str, output: str) -> None:
    assert flashing.parse_mac(output, re.compile(pattern)) == "24:0a:c4:12:34:56"


def test_matched_text_that_is_no_mac_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="6 bytes in hex"):
        flashing.parse_mac("MAC: 24:0a", re.compile(r"MAC: (\S+)"))


def test_bad_regex_is_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.compile_mac_pattern("(")
    assert exc.value.field == "mac_pattern"


def test_synthetic_mac_layout() -> None:
    assert flashing.synthetic_mac("02:aa:01", "O", 0x010203) == "02:aa:01:01:02:03"
    mac = flashing.synthetic_mac(None, "ORDER-1", 5)
    assert mac.startswith("02:") and mac.endswith(":00:00:05")


@given(st.text(min_size=1, max_size=20), st.integers(0, 999_999), st.integers(0, 999_999))
def test_synthetic_macs_differ_within_an_order(order: str, i: int, j: int) -> None:
    a, b = flashing.synthetic_mac(None, order, i), flashing.synthetic_mac(None, order, j)
    assert flashing.normalize_mac(a) == a
    assert (a == b) == (i == j)


@pytest.mark.parametrize("prefix", ["", "0", "02:aa:01:02", "zz"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.synthetic_mac(prefix, "O", 1)
    assert exc.value.field == "test_mac_prefix"


def test_settings_need_exactly_one_output() -> None:
    with pytest.raises(InvalidInput, match="exactly one of out"):
        load_settings(station_id="s", line="l")
    with pytest.raises(InvalidInput, match="exactly one of out"):
        load_settings(station_id="s", line="l", out="/tmp/x", flash_cmd="flash {partition}")


def test_settings_report_every_broken_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_STATION_LINE", "bad line")
    with pytest.raises(InvalidInput) as exc:
        load_settings(station_id="s", flash_cmd="x {nope}", fail_rate=2.0)
    fields = {e.field for e in exc.value.errors}
    assert fields == {"line", "flash_cmd", "fail_rate"}


def test_settings_from_env_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_STATION_LINE", "L1")
    monkeypatch.setenv("MATTERFAB_STATION_MAX_ATTEMPTS", "5")
    s = load_settings(station_id="s1", out="/tmp/x", max_attempts=2, timeout=None)
    assert (s.line, s.max_attempts, s.timeout, s.group_id) == (
        "L1",
        2,
        120.0,
        "matterfab-station-L1",
    )


# --- firmware bundles: {flash_args}, {chip}, per-device files, merged image -----------------

BUNDLE_TABLES = Path(__file__).resolve().parents[1] / "data" / "partition_tables"


async def _bundle_order(store: Any, dac_storage: str = "factory-nvs") -> Any:
    """A bundle on esp32c3 with esp-matter's table, and an order naming it, in `store`."""
    table = (BUNDLE_TABLES / "matter.bin").read_bytes()
    bundle, blobs = firmware.make_bundle(
        "light", "esp32c3", b"\xe9BOOT", table, b"\xe9APP" * 50, extras={0x3F0000: b"EXTRA"}
    )
    await firmware.store_bundle(store, bundle, blobs)
    order = {"order_id": "O", "firmware": "light", "dac_storage": dac_storage}
    store.objects["orders/O/order.json"] = json.dumps(order).encode()
    loaded = await firmware.OrderBundles(store).for_order("O")
    assert loaded is not None
    return loaded


async def test_device_files_in_flash_order() -> None:
    loaded = await _bundle_order(MemoryObjectStore())
    files = flashing.device_files(loaded, b"NVS", secure_cert=b"CERT")
    assert [(f.offset, f.name) for f in files] == [
        (0x0, "bootloader.bin"),
        (0x8000, "partition-table.bin"),
        (0x20000, "app.bin"),
        (0x3F0000, "extra-0x3F0000.bin"),
        (0xD000, "esp_secure_cert.bin"),
        (0x3E0000, "partition.bin"),
    ]
    assert flashing.flash_args_text(files).splitlines()[-1] == "0x3E0000 partition.bin"
    no_cert = flashing.device_files(loaded, b"NVS")
    assert "esp_secure_cert.bin" not in [f.name for f in no_cert]
    with pytest.raises(InvalidInput, match="partition: is 24577 bytes"):
        flashing.device_files(loaded, b"x" * 0x6001)


async def test_flash_args_placeholder_expands_to_pairs() -> None:
    loaded = await _bundle_order(MemoryObjectStore())
    image = flashing.device_image(loaded, b"NVS")
    paths = {f.name: f"/w/{f.name}" for f in image.files}
    argv = flashing.render_command(
        "esptool --chip {chip} -p {port} write-flash {flash_args}",
        {
            "chip": image.chip,
            "port": "/dev/ttyACM0",
            "flash_args": flashing.flash_args(image.files, paths),
        },
    )
    assert argv[:6] == ["esptool", "--chip", "esp32c3", "-p", "/dev/ttyACM0", "write-flash"]
    assert argv[6:] == [
        "0x0", "/w/bootloader.bin", "0x8000", "/w/partition-table.bin", "0x20000", "/w/app.bin",
        "0x3F0000", "/w/extra-0x3F0000.bin", "0x3E0000", "/w/partition.bin",
    ]  # fmt: skip
    with pytest.raises(InvalidInput, match="must be a whole argument"):
        flashing.check_template("esptool write-flash --x={flash_args}")
    with pytest.raises(InvalidInput, match=r"\{flash_args\} has no value"):
        flashing.render_command("esptool write-flash {flash_args}", {"flash_args": None})
    with pytest.raises(InvalidInput, match=r"\{chip\} has no value"):
        flashing.render_command("esptool --chip {chip}", {})


async def test_merged_image_puts_each_file_at_its_offset() -> None:
    loaded = await _bundle_order(MemoryObjectStore())
    files = flashing.device_files(loaded, b"NVS" * 100, secure_cert=b"CERT")
    merged = flashing.merged_image("esp32c3", files)
    for f in files:
        assert merged[f.offset : f.offset + len(f.data)] == f.data, f.name
    assert len(merged) == 0x3F0000 + len(b"EXTRA")  # ends with the highest file
    assert merged[0x30000:0x31000] == b"\xff" * 0x1000  # erased flash between files


def test_merged_needs_out() -> None:
    with pytest.raises(InvalidInput, match="merged needs out"):
        load_settings(station_id="s", line="l", flash_cmd="x {partition}", merged=True)


def _image_ready(store: Any, index: int, partition: bytes) -> Any:
    from matterfab.messages import ImageReady

    key = f"orders/O/devices/{index:07d}/partition.bin"
    store.objects[key] = partition
    ref = {"key": key, "sha256": hashlib.sha256(partition).hexdigest(), "size": len(partition)}
    return ImageReady.model_validate(
        {
            "order_id": "O",
            "device_id": f"O/{index:07d}",
            "index": index,
            "quantity": 2,
            "vendor_id": 0xFFF1,
            "product_id": 0x8000,
            "serial_num": f"SN{index}",
            "discriminator": 1,
            "qr_payload": "MT:Y.K9042C00KA0648G00",
            "manual_code": "34970112332",
            "dac_serial": "01",
            "objects": {"partition": ref, "qrcode": ref, "onboarding": ref, "dac": ref},
        }
    )


async def test_station_writes_bundle_files_and_refuses_a_corrupt_bundle(tmp_path: Path) -> None:
    from matterfab.services.station.service import Station, make_flasher

    store = MemoryObjectStore()
    await _bundle_order(store)
    settings = load_settings(station_id="s1", line="L", out=str(tmp_path), merged=True)
    station = Station(settings, store, make_flasher(settings))
    [result] = [e.message for e in await station.handle(_image_ready(store, 0, b"NVS0"))]
    assert result.status == "flashed"
    folder = tmp_path / "O" / "0000000"
    assert (folder / "flash_args").read_text().split() == [
        "0x0", "bootloader.bin", "0x8000", "partition-table.bin", "0x20000", "app.bin",
        "0x3F0000", "extra-0x3F0000.bin", "0x3E0000", "partition.bin",
    ]  # fmt: skip
    merged = (folder / "merged.bin").read_bytes()
    assert merged[0x3E0000:0x3E0004] == b"NVS0" and merged[0x20000:0x20004] == b"\xe9APP"

    # The bundle's app rots in the bucket: a new station checks it before flashing anything.
    store.objects[firmware.bundle_key("light", "app.bin")] = b"rotten"
    fresh = Station(settings, store, make_flasher(settings))
    [failed] = [e.message for e in await fresh.handle(_image_ready(store, 1, b"NVS1"))]
    assert failed.status == "failed" and "app.bin has sha256" in (failed.reason or "")
    assert not (tmp_path / "O" / "0000001").exists()


async def test_secure_cert_placeholder_without_bundle(tmp_path: Path) -> None:
    import sys

    from matterfab.services.station.service import CommandFlasher

    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib, sys\n"
        "cert, part, offset = sys.argv[1:4]\n"
        "read = lambda p: pathlib.Path(p).read_bytes()\n"
        "ok = read(cert) == b'CERT' and read(part) == b'NVS'\n"
        "print('MAC: 02:00:00:00:00:01' if ok and offset == '0x3E0000' else 'wrong files')\n"
    )
    cmd = f"{sys.executable} {check} {{secure_cert}} {{partition}} {{offset}}"
    settings = load_settings(station_id="s", line="l", flash_cmd=cmd, offset="0x3E0000")
    store = MemoryObjectStore()
    msg = _image_ready(store, 0, b"NVS")
    image = flashing.DeviceImage(b"NVS", secure_cert=b"CERT")
    assert await CommandFlasher(settings).flash_image(msg, image) == "02:00:00:00:00:01"
