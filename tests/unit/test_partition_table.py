"""The partition-table reader against tables written by ESP-IDF's own generator.

`tests/data/partition_tables/` holds binaries made by `gen_esp32part.py` and the generator's
own reading of each (README there says how). Bad tables are altered copies of a real one; the
README records that the generator refuses each of them too.
"""

from __future__ import annotations

import csv
import hashlib
import struct
from pathlib import Path

import pytest

from matterfab.errors import InvalidInput
from matterfab.matter import partition_table as pt

DATA = Path(__file__).resolve().parents[1] / "data" / "partition_tables"
TABLES = ("matter", "factory_app", "no_fctry", "small_secure_cert")
FCTRY_ROW = 7  # in matter.bin; the MD5 row follows at row 8


def expected(name: str) -> list[pt.Partition]:
    """The generator's reading of NAME.bin (simple formatting: numbers only)."""
    rows = [
        r for r in csv.reader((DATA / f"{name}.expected.csv").open()) if not r[0].startswith("#")
    ]
    return [
        pt.Partition(
            label=r[0],
            type=int(r[1], 0),
            subtype=int(r[2], 0),
            offset=int(r[3], 0),
            size=int(r[4], 0),
            flags=sum(1 << {"encrypted": 0, "readonly": 1}[f] for f in r[5].split(":") if f),
        )
        for r in rows
    ]


@pytest.mark.parametrize("name", TABLES)
def test_reads_generator_tables(name: str) -> None:
    data = (DATA / f"{name}.bin").read_bytes()
    table = pt.parse(data)
    assert list(table.entries) == expected(name)
    assert table.md5 == hashlib.md5(data[: 32 * len(table.entries)]).digest()


@pytest.mark.parametrize("name", TABLES)
def test_encode_round_trips_to_generator_bytes(name: str) -> None:
    data = (DATA / f"{name}.bin").read_bytes()
    assert pt.encode(list(pt.parse(data).entries)) == data


def test_matter_layout_lookups() -> None:
    table = pt.parse((DATA / "matter.bin").read_bytes())
    fctry = table.find("fctry")
    assert fctry is not None and (fctry.offset, fctry.size) == (0x3E0000, 0x6000)
    cert = table.find("esp_secure_cert")
    assert cert is not None and cert.encrypted and (cert.offset, cert.size) == (0xD000, 0x2000)
    app = table.boot_app()
    assert app is not None and (app.label, app.offset) == ("ota_0", 0x20000)
    assert table.find("nope") is None
    assert table.flash_end == 0x3E6000
    factory = pt.parse((DATA / "factory_app.bin").read_bytes()).boot_app()
    assert factory is not None and factory.label == "factory"


def altered(offset: int | None = None, row: int = FCTRY_ROW, magic: bytes | None = None) -> bytes:
    """matter.bin with one entry changed and its MD5 row recomputed."""
    data = bytearray((DATA / "matter.bin").read_bytes())
    if offset is not None:
        struct.pack_into("<I", data, row * 32 + 4, offset)
    if magic is not None:
        data[row * 32 : row * 32 + 2] = magic
    md5_row = 8 * 32
    data[md5_row + 16 : md5_row + 32] = hashlib.md5(bytes(data[:md5_row])).digest()
    return bytes(data)


def refused(data: bytes) -> str:
    with pytest.raises(InvalidInput) as err:
        pt.parse(data, field="partition_table")
    assert err.value.field == "partition_table"
    return err.value.errors[0].message


def test_bad_md5_row() -> None:
    data = bytearray((DATA / "matter.bin").read_bytes())
    data[0x28] ^= 0x01  # nvs size; the MD5 row is left as the generator wrote it
    message = refused(bytes(data))
    assert "row 8" in message and "MD5 row does not match" in message
    assert "computed 9e2b17c69b5a930959d7442d42da0a26" in message  # as gen_esp32part computes


def test_overlapping_entries() -> None:
    message = refused(altered(offset=0x3DF000))
    assert "overlap" in message and "'fctry' at 0x3DF000" in message and "'ota_1'" in message


def test_misaligned_offsets() -> None:
    assert "misaligned" in refused(altered(offset=0x3E0800))
    assert "app partition starts on 0x10000" in refused(altered(offset=0x21000, row=5))


def test_unknown_magic() -> None:
    assert "unknown magic 0x3412" in refused(altered(magic=b"\x12\x34", row=1))


def test_structure_rules() -> None:
    data = (DATA / "matter.bin").read_bytes()
    assert "no end row" in refused(data[: 9 * 32])
    assert "truncated" in refused(data[: 9 * 32 + 5])
    assert "one 0x1000-byte sector" in refused(data + b"\xff" * 0x1000)
    after_md5 = data[: 9 * 32] + data[:32] + data[9 * 32 + 32 :]
    assert "followed by the end row" in refused(after_md5)
    dupe = [pt.Partition("a", 1, 2, 0x9000, 0x1000), pt.Partition("a", 1, 2, 0xA000, 0x1000)]
    assert "unique" in refused(pt.encode(dupe))
    assert "size 0" in refused(pt.encode([pt.Partition("z", 1, 2, 0x9000, 0)]))


def test_table_without_md5_row() -> None:
    entries = [pt.Partition("fctry", 1, 2, 0x9000, 0x6000)]
    table = pt.parse(pt.encode(entries, with_md5=False))
    assert table.entries == tuple(entries) and table.md5 is None
