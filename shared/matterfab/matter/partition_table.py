"""ESP-IDF partition table binaries: read and check the table a firmware bundle flashes.

Layout (ESP-IDF `components/partition_table`, `gen_esp32part.py` v1.5, `esp_flash_partitions.h`):
a sequence of 32-byte rows, little-endian,

    magic u16 = 0x50AA (bytes AA 50) | type u8 | subtype u8 | offset u32 | size u32 |
    label 16 bytes (UTF-8, NUL-padded) | flags u32 (bit 0 encrypted, bit 1 readonly)

then an optional MD5 row (bytes EB EB, 14 x FF, then the MD5 of every preceding entry row),
then an end row of 32 x FF. The generator pads the file to 0xC00 bytes with FF, and the table
lives in one 4 KiB flash sector (default offset 0x8000), so it holds at most 95 entries.

Rules checked here (each failure names the rule and the row): a row is an entry, the MD5 row or
the end row, nothing else; the MD5 row matches and is followed by the end row; app partitions
start on 64 KiB, every other partition on 4 KiB; no two partitions overlap; labels are unique.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass

from matterfab.errors import invalid

ROW = 32
ENTRY_MAGIC = b"\xaa\x50"  # 0x50AA little-endian
MD5_MAGIC = b"\xeb\xeb"
MD5_ROW_FILL = b"\xff" * 14
END_ROW = b"\xff" * ROW
TABLE_SECTOR = 0x1000  # the flash sector the table occupies
MAX_TABLE_BYTES = 0xC00  # gen_esp32part MAX_PARTITION_LENGTH: the rest of the sector is a signature
_ENTRY = struct.Struct("<2sBBII16sI")

APP_TYPE, DATA_TYPE, BOOTLOADER_TYPE, PARTITION_TABLE_TYPE = 0x00, 0x01, 0x02, 0x03
LAYOUT_TYPES = (BOOTLOADER_TYPE, PARTITION_TABLE_TYPE)  # entries that describe these regions
APP_FACTORY, APP_OTA_0 = 0x00, 0x10
DATA_NVS, DATA_NVS_KEYS = 0x02, 0x04
APP_ALIGN = 0x10000  # app partitions are mapped through the MMU in 64 KiB pages
DATA_ALIGN = 0x1000  # everything else: the flash erase sector
FLAG_ENCRYPTED, FLAG_READONLY = 1 << 0, 1 << 1


@dataclass(frozen=True)
class Partition:
    """One entry of a partition table."""

    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self) -> int:
        """First byte after the partition."""
        return self.offset + self.size

    @property
    def encrypted(self) -> bool:
        """Flash encryption applies to this partition."""
        return bool(self.flags & FLAG_ENCRYPTED)

    def __str__(self) -> str:
        return f"{self.label!r} at 0x{self.offset:X} (0x{self.size:X} bytes)"


@dataclass(frozen=True)
class PartitionTable:
    """A parsed, checked partition table."""

    entries: tuple[Partition, ...]
    md5: bytes | None  # the MD5 row's digest; None if the table has no MD5 row

    def find(self, label: str) -> Partition | None:
        """The partition with this label, or None."""
        return next((p for p in self.entries if p.label == label), None)

    def boot_app(self) -> Partition | None:
        """The app the bootloader starts on a blank module: `factory`, else `ota_0`."""
        for subtype in (APP_FACTORY, APP_OTA_0):
            for p in self.entries:
                if p.type == APP_TYPE and p.subtype == subtype:
                    return p
        return None

    @property
    def flash_end(self) -> int:
        """The end of the last partition: the least flash the table needs."""
        return max((p.end for p in self.entries), default=0)


def parse(data: bytes, field: str = "partition_table") -> PartitionTable:
    """Read a partition table binary and check it; InvalidInput naming `field` and the rule."""
    if len(data) > TABLE_SECTOR:
        raise invalid(
            field,
            f"is {len(data)} bytes; a partition table fits in one 0x{TABLE_SECTOR:X}-byte sector",
        )
    md5 = hashlib.md5(usedforsecurity=False)
    entries: list[Partition] = []
    digest: bytes | None = None
    for pos in range(0, len(data), ROW):
        row = data[pos : pos + ROW]
        where = f"row {pos // ROW} (byte 0x{pos:X})"
        if len(row) != ROW:
            raise invalid(field, f"{where}: truncated; the table is a sequence of 32-byte rows")
        if row == END_ROW:
            _check_layout(entries, field)
            return PartitionTable(tuple(entries), digest)
        if digest is not None:
            raise invalid(field, f"{where}: the MD5 row must be followed by the end row (32 x FF)")
        if row[:2] == MD5_MAGIC:
            if row[2:16] != MD5_ROW_FILL:
                raise invalid(field, f"{where}: MD5 row must have 14 x FF after EB EB")
            if row[16:] != md5.digest():
                raise invalid(
                    field,
                    f"{where}: MD5 row does not match the entries (stored {row[16:].hex()}, "
                    f"computed {md5.hexdigest()}): the table is corrupt",
                )
            digest = row[16:]
            continue
        if row[:2] != ENTRY_MAGIC:
            raise invalid(
                field,
                f"{where}: unknown magic 0x{int.from_bytes(row[:2], 'little'):04X} (an entry "
                "starts with 0x50AA, the MD5 row with 0xEBEB, the end row is all FF)",
            )
        md5.update(row)
        entries.append(_entry(row, where, field))
        if len(entries) * ROW >= MAX_TABLE_BYTES:
            raise invalid(field, f"{where}: more entries than fit in 0x{MAX_TABLE_BYTES:X} bytes")
    raise invalid(field, "has no end row (32 x FF) after its entries")


def _entry(row: bytes, where: str, field: str) -> Partition:
    _, ptype, subtype, offset, size, raw_label, flags = _ENTRY.unpack(row)
    try:
        label = raw_label.split(b"\x00", 1)[0].decode()
    except UnicodeDecodeError:
        raise invalid(field, f"{where}: label {raw_label!r} is not UTF-8") from None
    part = Partition(label, ptype, subtype, offset, size, flags)
    align = APP_ALIGN if ptype == APP_TYPE else DATA_ALIGN
    if offset % align:
        kind = "an app" if ptype == APP_TYPE else "a data"
        raise invalid(
            field,
            f"{where}: partition {part} is misaligned: {kind} partition starts on 0x{align:X}",
        )
    if size == 0:
        raise invalid(field, f"{where}: partition {part} has size 0")
    return part


def _check_layout(entries: list[Partition], field: str) -> None:
    labels = [p.label for p in entries]
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise invalid(field, f"partition labels must be unique; repeated: {', '.join(dupes)}")
    ordered = sorted(entries, key=lambda p: p.offset)
    for before, after in itertools.pairwise(ordered):
        if after.offset < before.end:
            raise invalid(
                field,
                f"partitions overlap: {after} starts before {before} ends (0x{before.end:X})",
            )


def encode(entries: list[Partition], with_md5: bool = True) -> bytes:
    """A table binary as the generator writes it (entries, MD5 row, FF padding to 0xC00)."""
    body = b"".join(
        _ENTRY.pack(ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size, p.label.encode(), p.flags)
        for p in entries
    )
    if with_md5:
        body += MD5_MAGIC + MD5_ROW_FILL + hashlib.md5(body, usedforsecurity=False).digest()
    return body + b"\xff" * (MAX_TABLE_BYTES - len(body))


__all__ = ["Partition", "PartitionTable", "encode", "parse"]
