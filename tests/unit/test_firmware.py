"""Firmware bundles: the model, its layout rules, write-once storage, the allocator's check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import esptool.targets
import pytest

from matterfab import firmware
from matterfab.errors import FieldError, InvalidInput
from matterfab.messages.work_order import WorkOrder
from matterfab.objectstore import MemoryObjectStore

TABLES = Path(__file__).resolve().parents[1] / "data" / "partition_tables"
MATTER = (TABLES / "matter.bin").read_bytes()
BOOT, APP = b"\xe9boot" * 100, b"\xe9app" * 1000


def order(**kw: Any) -> WorkOrder:
    data = {
        "order_id": "WO-1",
        "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
        "quantity": 2,
        "mfg_date": "2026-01-01",
        "attestation_profile": "p",
        "firmware": "light",
        **kw,
    }
    return WorkOrder.model_validate(data)


def bundle(table: bytes = MATTER, **kw: Any) -> tuple[firmware.Bundle, dict[str, bytes]]:
    return firmware.make_bundle("light", "esp32c3", BOOT, table, APP, **kw)


def rules(exc: pytest.ExceptionInfo[InvalidInput]) -> list[str]:
    return [str(e) for e in exc.value.errors]


def test_bootloader_offsets_are_esptools() -> None:
    for chip, offset in firmware.BOOTLOADER_OFFSETS.items():
        assert esptool.targets.CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET == offset, chip


def test_offsets_come_from_chip_and_table() -> None:
    b, blobs = bundle(extras={0x3F0000: b"x" * 10})
    placed = [(f.role, f.name, f.offset, f.size) for f in b.files]
    assert placed == [
        ("bootloader", "bootloader.bin", 0x0, len(BOOT)),
        ("partition-table", "partition-table.bin", 0x8000, len(MATTER)),
        ("app", "app.bin", 0x20000, len(APP)),  # ota_0 of the table
        ("extra", "extra-0x3F0000.bin", 0x3F0000, 10),
    ]
    assert blobs["app.bin"] == APP and b.factory_partition == "fctry"
    esp32, _ = firmware.make_bundle("x", "esp32", BOOT, MATTER, APP)
    assert esp32.file("bootloader").offset == 0x1000
    factory, _ = bundle(table=(TABLES / "factory_app.bin").read_bytes())
    assert factory.file("app").offset == 0x10000


def test_bad_bundles_name_every_rule() -> None:
    with pytest.raises(InvalidInput) as exc:
        firmware.make_bundle("bad name", "esp8266", BOOT, MATTER, APP, flash_size="3MB")
    assert [e.field for e in exc.value.errors] == ["name", "chip", "flash_size"]
    with pytest.raises(InvalidInput) as exc:
        firmware.make_bundle("x", "esp32c3", b"b" * 0x9000, MATTER, b"a" * 0x1E0001)
    got = rules(exc)
    assert any(r.startswith("bootloader: is 36864 bytes") for r in got), got
    assert any(r.startswith("app: is 1966081 bytes; partition 'ota_0'") for r in got), got
    with pytest.raises(InvalidInput) as exc:
        bundle(flash_size="2MB")
    assert rules(exc)[0] == (
        "flash_size: the partition table needs 0x3E6000 bytes of flash, more than 2MB"
    )
    with pytest.raises(InvalidInput) as exc:
        bundle(extras={0x3E1000: b"x", 0x20000: b"y", 0x3F0800: b"z"})
    got = rules(exc)
    assert "extra: offset 0x3F0800 is not on a 0x1000 sector" in got
    assert any("0x20000 (1 bytes) overlaps app" in r for r in got), got
    assert any("0x3E1000 (1 bytes) overlaps partition 'fctry'" in r for r in got), got
    with pytest.raises(InvalidInput) as exc:
        bundle(table=MATTER[:40])
    assert exc.value.field == "partition_table"


async def test_store_is_write_once_and_load_checks_every_file() -> None:
    store = MemoryObjectStore()
    b, blobs = bundle()
    assert await firmware.store_bundle(store, b, blobs)
    assert not await firmware.store_bundle(store, *bundle())  # same files again: no-op
    other, other_blobs = firmware.make_bundle("light", "esp32c3", BOOT, MATTER, APP + b"!")
    with pytest.raises(InvalidInput) as exc:
        await firmware.store_bundle(store, other, other_blobs)
    assert exc.value.field == "name" and "write-once" in str(exc.value)
    loaded = await firmware.load(store, "light")
    assert loaded is not None and loaded.blobs == blobs
    assert loaded.table.find("fctry") is not None
    assert await firmware.load(store, "nope") is None
    assert await firmware.list_bundles(store) == ["light"]
    store.objects[firmware.bundle_key("light", "app.bin")] = APP[:-1] + b"?"  # bit rot
    with pytest.raises(InvalidInput) as exc:
        await firmware.load(store, "light")
    assert exc.value.field == "firmware"
    assert "file app.bin has sha256" in str(exc.value) and "corrupt" in str(exc.value)


async def test_allocator_check() -> None:
    store = MemoryObjectStore()
    for name, table in [
        ("light", "matter"),
        ("plain", "factory_app"),
        ("nofctry", "no_fctry"),
        ("smallcert", "small_secure_cert"),
    ]:
        b, blobs = firmware.make_bundle(
            name, "esp32c3", BOOT, (TABLES / f"{table}.bin").read_bytes(), APP
        )
        await firmware.store_bundle(store, b, blobs)

    async def errors(**kw: Any) -> list[FieldError]:
        return await firmware.check_order(store, order(**kw))

    assert await errors() == []
    assert await errors(firmware=None) == []
    assert await errors(dac_storage="secure-cert") == []
    assert (await errors(firmware="ghost"))[0].message.startswith("unknown firmware bundle 'ghost'")
    [missing] = await errors(firmware="nofctry")
    assert missing.field == "firmware" and "no factory partition 'fctry'" in missing.message
    [size] = await errors(partition={"size": 0x5000, "encryption": "none"})
    assert (
        size.field == "partition.size"
        and size.message.startswith("must equal 0x6000")
        and "(is 0x5000)" in size.message
    )
    [nocert] = await errors(firmware="plain", dac_storage="secure-cert")
    assert "no 'esp_secure_cert' partition" in nocert.message
    [small] = await errors(firmware="smallcert", dac_storage="secure-cert")
    assert "smaller than the esp_secure_cert image (0x2000 bytes)" in small.message
    [xts] = await errors(partition={"size": 0x6000, "encryption": "xts"})
    assert xts.field == "partition.encryption"
