"""Firmware bundles: a product's bootloader, partition table and app, registered once.

`matterfab firmware add` stores a bundle write-once under `firmware/<name>/`: its files, then
`bundle.json` (written last: a bundle without it does not exist). A work order may name a
bundle (`firmware`); then every device is programmed whole: bootloader, partition table, app,
extras, the device's `esp_secure_cert.bin` when the order has one, and its NVS factory
partition, each at its offset. Offsets come from the chip (bootloader), the bundle (partition
table) and the bundle's own partition table (app, factory partition, `esp_secure_cert`): the
table is the one source of where things go, so an order cannot disagree with the firmware.

Who checks what: `firmware add` refuses a bundle whose files do not fit its table and flash;
the allocator refuses an order whose bundle is unknown, corrupt (a file's sha256 no longer
matches `bundle.json`), lacks a partition the order needs, or whose `partition.size` is not
the table's factory partition size; a station checks every file's sha256 before it flashes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matterfab.bucket import keys as bucket_keys
from matterfab.errors import FieldError, IntegrityError, InvalidInput, invalid
from matterfab.matter import partition_table as pt
from matterfab.matter import secure_cert
from matterfab.messages.base import utcnow
from matterfab.messages.codec import decode_json, validation_errors
from matterfab.messages.work_order import FIRMWARE_NAME_PATTERN, WorkOrder
from matterfab.objectstore import Store

BUNDLE_TYPE = "firmware-bundle/v1"
BUNDLE_FILE = bucket_keys.BUNDLE_FILE
PREFIX = bucket_keys.FIRMWARE

# Where the ROM bootloader looks for the second-stage bootloader, per chip: esptool's
# `<Chip>ROM.BOOTLOADER_FLASH_OFFSET` (esptool 5.6.0; tests/unit/test_firmware.py checks this
# table against esptool). The chips listed are the ones ESP-Matter builds for.
BOOTLOADER_OFFSETS: dict[str, int] = {
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c2": 0x0,
    "esp32c3": 0x0,
    "esp32c5": 0x2000,
    "esp32c6": 0x0,
    "esp32c61": 0x0,
    "esp32h2": 0x0,
    "esp32p4": 0x2000,
}
FLASH_SIZES = {f"{n}MB": n << 20 for n in (1, 2, 4, 8, 16, 32, 64, 128)}
DEFAULT_FLASH_SIZE = "4MB"
DEFAULT_TABLE_OFFSET = 0x8000  # ESP-IDF's CONFIG_PARTITION_TABLE_OFFSET default
FACTORY_PARTITION = "fctry"  # ESP-Matter's CONFIG_CHIP_FACTORY_NAMESPACE_PARTITION_LABEL
SECURE_CERT_PARTITION = "esp_secure_cert"  # esp_secure_cert_mgr's partition label
# The partition must hold the largest esp_secure_cert image the builder may write (0x2000,
# the size ESP-Matter's tables give it).
SECURE_CERT_MIN_SIZE = secure_cert.MAX_SIZE
ROLE_ORDER = ("bootloader", "partition-table", "app", "extra")

Role = Literal["bootloader", "partition-table", "app", "extra"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class BundleFile(BaseModel):
    """One file of a bundle and where it is flashed."""

    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="bootloader, partition-table, app or extra")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$", description="Object name in the bundle")
    offset: int = Field(ge=0, description="Flash offset")
    size: int = Field(ge=1, description="Bytes")
    sha256: Sha256
    source: str | None = Field(None, description="The file name it was registered from")

    @property
    def end(self) -> int:
        """First flash byte after the file."""
        return self.offset + self.size


class Bundle(BaseModel):
    """`bundle.json`: what a bundle holds and where each file goes (`firmware-bundle/v1`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["firmware-bundle/v1"] = "firmware-bundle/v1"
    name: str = Field(pattern=FIRMWARE_NAME_PATTERN)
    chip: str = Field(description="esptool chip name, e.g. esp32c3")
    flash_size: str = Field(DEFAULT_FLASH_SIZE, description="1MB..128MB")
    factory_partition: str = Field(FACTORY_PARTITION, description="Label of the NVS factory part")
    secure_cert_partition: str = Field(SECURE_CERT_PARTITION, description="esp_secure_cert label")
    files: list[BundleFile]
    created_at: datetime = Field(default_factory=utcnow)

    def file(self, role: Role) -> BundleFile:
        """The one file of a role (bootloader, partition-table, app)."""
        return next(f for f in self.files if f.role == role)


def bundle_key(name: str, file: str = BUNDLE_FILE) -> str:
    """Object key of a bundle file: `firmware/<name>/<file>` (DESIGN §5)."""
    return bucket_keys.bundle_key(name, file)


def parse_offset(text: str, field: str) -> int:
    """A flash offset written as decimal or 0x-hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise invalid(field, f"offset must be a number such as 0x3F0000, got {text!r}") from None


def make_bundle(
    name: str,
    chip: str,
    bootloader: bytes,
    table: bytes,
    app: bytes,
    extras: Mapping[int, bytes] = {},
    flash_size: str = DEFAULT_FLASH_SIZE,
    table_offset: int = DEFAULT_TABLE_OFFSET,
    factory_partition: str = FACTORY_PARTITION,
    sources: Mapping[str, str] = {},
) -> tuple[Bundle, dict[str, bytes]]:
    """Check a bundle's files against its chip, table and flash size; the model and its blobs.

    Raises InvalidInput naming every broken rule (field = the option that gave the file).
    """
    errors: list[FieldError] = []
    if not re.match(FIRMWARE_NAME_PATTERN, name):
        errors.append(FieldError("name", "must be 1..64 of [A-Za-z0-9._-]"))
    if chip not in BOOTLOADER_OFFSETS:
        errors.append(FieldError("chip", f"must be one of {', '.join(BOOTLOADER_OFFSETS)}"))
    if flash_size not in FLASH_SIZES:
        errors.append(FieldError("flash_size", f"must be one of {', '.join(FLASH_SIZES)}"))
    try:
        parsed = pt.parse(table, "partition_table")
    except InvalidInput as exc:
        raise InvalidInput(errors + exc.errors) from None
    if errors:
        raise InvalidInput(errors)
    boot_app = parsed.boot_app()
    if boot_app is None:
        raise invalid("partition_table", "has no factory or ota_0 app partition to put the app in")
    placed: list[tuple[Role, str, int, bytes]] = [
        ("bootloader", "bootloader.bin", BOOTLOADER_OFFSETS[chip], bootloader),
        ("partition-table", "partition-table.bin", table_offset, table),
        ("app", "app.bin", boot_app.offset, app),
    ]
    for offset, data in sorted(extras.items()):
        placed.append(("extra", f"extra-0x{offset:X}.bin", offset, data))
    files = [
        BundleFile(
            role=role,
            name=obj,
            offset=offset,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            source=sources.get(obj),
        )
        for role, obj, offset, data in placed
    ]
    bundle = Bundle(
        name=name,
        chip=chip,
        flash_size=flash_size,
        factory_partition=factory_partition,
        files=files,
    )
    layout_errors(bundle, parsed)
    return bundle, {obj: data for _, obj, _, data in placed}


def _field(f: BundleFile) -> str:
    return "extra" if f.role == "extra" else f.role.replace("-", "_")


def layout_errors(bundle: Bundle, table: pt.PartitionTable) -> None:
    """Every file fits the flash, the app fits its partition, nothing overlaps anything."""
    errors: list[FieldError] = []
    flash = FLASH_SIZES[bundle.flash_size]
    if table.flash_end > flash:
        errors.append(
            FieldError(
                "flash_size",
                f"the partition table needs 0x{table.flash_end:X} bytes of flash, more than "
                f"{bundle.flash_size}",
            )
        )
    tbl = bundle.file("partition-table")
    boot = bundle.file("bootloader")
    for f in bundle.files:
        if f.offset % 0x1000:
            errors.append(FieldError(_field(f), f"offset 0x{f.offset:X} is not on a 0x1000 sector"))
        if f.end > flash:
            errors.append(
                FieldError(_field(f), f"ends at 0x{f.end:X}, past the {bundle.flash_size} flash")
            )
    if boot.end > tbl.offset:
        errors.append(
            FieldError(
                "bootloader",
                f"is {boot.size} bytes at 0x{boot.offset:X}: it runs into the partition table "
                f"at 0x{tbl.offset:X}",
            )
        )
    app_part = table.boot_app()
    app = bundle.file("app")
    if app_part is not None and app.size > app_part.size:
        errors.append(FieldError("app", f"is {app.size} bytes; partition {app_part} is smaller"))
    # Regions flashed per device: an extra there would be overwritten (or overwrite them).
    reserved: list[tuple[str, int, int]] = [
        (f.role, f.offset, f.end) for f in bundle.files if f.role != "extra"
    ]
    reserved.append(("partition table sector", tbl.offset, tbl.offset + pt.TABLE_SECTOR))
    for label in (bundle.factory_partition, bundle.secure_cert_partition):
        part = table.find(label)
        if part is not None:
            reserved.append((f"partition {label!r}", part.offset, part.end))
    extras = [f for f in bundle.files if f.role == "extra"]
    for i, f in enumerate(extras):
        for what, start, end in reserved + [(e.name, e.offset, e.end) for e in extras[:i]]:
            if f.offset < end and start < f.end:
                errors.append(
                    FieldError(
                        "extra",
                        f"0x{f.offset:X} ({f.size} bytes) overlaps {what} (0x{start:X}..0x{end:X})",
                    )
                )
    for p in table.entries:
        if p.type not in pt.LAYOUT_TYPES and p.offset < tbl.offset + pt.TABLE_SECTOR:
            errors.append(
                FieldError(
                    "partition_table",
                    f"partition {p} lies below the end of the table's own sector "
                    f"(0x{tbl.offset + pt.TABLE_SECTOR:X})",
                )
            )
    if errors:
        raise InvalidInput(errors)


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle read from the bucket with every file checked against `bundle.json`."""

    bundle: Bundle
    sha256: str  # of bundle.json: what a manifest records
    table: pt.PartitionTable
    blobs: dict[str, bytes]  # object name -> bytes

    def partition(self, label: str) -> pt.Partition | None:
        """A partition of the bundle's table."""
        return self.table.find(label)


async def load(store: Store, name: str, field: str = "firmware") -> LoadedBundle | None:
    """Read a bundle and check every file's size and sha256; None if it does not exist.

    Raises InvalidInput (on `field`) if `bundle.json` or any file is missing or corrupt.
    """
    raw = await store.get_or_none(bundle_key(name))
    if raw is None:
        return None
    try:
        bundle = Bundle.model_validate(decode_json(raw))
    except (ValidationError, InvalidInput) as exc:
        detail = (
            "; ".join(str(e) for e in validation_errors(exc))
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise invalid(
            field, f"bundle {name!r}: bundle.json is not a valid bundle ({detail})"
        ) from None
    blobs: dict[str, bytes] = {}
    for f in bundle.files:
        data = await store.get_or_none(bundle_key(name, f.name))
        if data is None:
            raise invalid(field, f"bundle {name!r}: file {f.name} is missing from the bucket")
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256 or len(data) != f.size:
            raise invalid(
                field,
                f"bundle {name!r}: file {f.name} has sha256 {digest} ({len(data)} bytes), "
                f"not bundle.json's {f.sha256} ({f.size} bytes): the stored file is corrupt",
            )
        blobs[f.name] = data
    table = pt.parse(blobs[bundle.file("partition-table").name], field)
    return LoadedBundle(bundle, hashlib.sha256(raw).hexdigest(), table, blobs)


async def store_bundle(store: Store, bundle: Bundle, blobs: Mapping[str, bytes]) -> bool:
    """Store a bundle write-once: files, then `bundle.json`. False if the name already holds
    the same files (nothing written); InvalidInput if it holds different ones.
    """
    existing = await store.get_or_none(bundle_key(bundle.name))
    if existing is not None:
        old = Bundle.model_validate(decode_json(existing))
        same = [(f.role, f.offset, f.sha256) for f in old.files] == [
            (f.role, f.offset, f.sha256) for f in bundle.files
        ] and (old.chip, old.flash_size, old.factory_partition) == (
            bundle.chip,
            bundle.flash_size,
            bundle.factory_partition,
        )
        if same:
            return False
        raise invalid(
            "name",
            f"firmware bundle {bundle.name!r} already exists with other contents (bundles are "
            "write-once: register the new firmware under a new name)",
        )
    for f in bundle.files:
        await store.put_once(bundle_key(bundle.name, f.name), blobs[f.name])
    body = bundle.model_dump_json(indent=2).encode()
    if not await store.put_if_absent(bundle_key(bundle.name), body, "application/json"):
        return await store_bundle(store, bundle, blobs)  # another add won the race: compare
    return True


async def list_bundles(store: Store) -> list[str]:
    """Names of the registered bundles (those with a bundle.json)."""
    return bucket_keys.bundle_names(await store.list_keys(PREFIX))


def order_errors(loaded: LoadedBundle, order: WorkOrder) -> list[FieldError]:
    """What an order needs of its bundle's partition table, as field errors."""
    b = loaded.bundle
    errors = []
    fctry = loaded.partition(b.factory_partition)
    if fctry is None:
        errors.append(
            FieldError(
                "firmware",
                f"bundle {b.name!r} has no factory partition {b.factory_partition!r} in its "
                "partition table: the NVS factory image has nowhere to go",
            )
        )
    elif (fctry.type, fctry.subtype) != (pt.DATA_TYPE, pt.DATA_NVS):
        errors.append(
            FieldError(
                "firmware", f"bundle {b.name!r}: partition {fctry} is not a data/nvs partition"
            )
        )
    elif order.partition.size != fctry.size:
        errors.append(
            FieldError(
                "partition.size",
                f"must equal 0x{fctry.size:X}, the size of factory partition "
                f"{b.factory_partition!r} in bundle {b.name!r} (is 0x{order.partition.size:X})",
            )
        )
    if order.partition.encryption == "xts":
        errors.append(
            FieldError(
                "partition.encryption",
                "xts is not supported with a firmware bundle yet (the NVS keys partition of "
                "the factory partition is not located in the bundle's table); order without "
                "firmware, or with encryption none",
            )
        )
    if order.dac_storage == "secure-cert":
        cert = loaded.partition(b.secure_cert_partition)
        if cert is None:
            errors.append(
                FieldError(
                    "firmware",
                    f"bundle {b.name!r} has no {b.secure_cert_partition!r} partition, which "
                    "dac_storage secure-cert needs",
                )
            )
        elif cert.size < SECURE_CERT_MIN_SIZE:
            errors.append(
                FieldError(
                    "firmware",
                    f"bundle {b.name!r}: partition {cert} is smaller than the "
                    f"esp_secure_cert image (0x{SECURE_CERT_MIN_SIZE:X} bytes)",
                )
            )
    return errors


async def check_order(store: Store, order: WorkOrder) -> list[FieldError]:
    """The allocator's check of an order's `firmware`: known, intact, fits the order."""
    if order.firmware is None:
        return []
    try:
        loaded = await load(store, order.firmware)
    except InvalidInput as exc:
        return exc.errors
    if loaded is None:
        return [
            FieldError(
                "firmware",
                f"unknown firmware bundle {order.firmware!r} (register it with "
                "`matterfab firmware add`)",
            )
        ]
    return order_errors(loaded, order)


@dataclass(frozen=True)
class FirmwareRef:
    """An order's bundle as a manifest records it."""

    name: str
    sha256: str  # of bundle.json

    def as_json(self) -> dict[str, str]:
        """As manifest.json records it."""
        return {"name": self.name, "sha256": self.sha256}


async def order_firmware(store: Store, order: Mapping[str, Any]) -> FirmwareRef | None:
    """The bundle an order (its order.json) names, with its bundle.json's sha256."""
    name = order.get("firmware")
    if not name:
        return None
    body = await store.get_or_none(bundle_key(name))
    if body is None:
        raise IntegrityError(f"order {order.get('order_id')}: bundle {name!r} is not in the bucket")
    return FirmwareRef(name, hashlib.sha256(body).hexdigest())


class OrderBundles:
    """A station's view of bundles: each order's bundle, loaded and checked once, by sha256.

    An order's `firmware` never changes (order.json and bundle.json are write-once), so the
    answer per order is cached; a bundle is downloaded and checked once however many orders
    name it.
    """

    def __init__(self, store: Store):
        self.store = store
        self.by_order: dict[str, str | None] = {}  # order_id -> bundle.json sha256 or None
        self.by_sha: dict[str, LoadedBundle] = {}

    async def for_order(self, order_id: str) -> LoadedBundle | None:
        """The order's checked bundle, or None if it names none; InvalidInput if unusable."""
        if order_id in self.by_order:
            sha = self.by_order[order_id]
            return None if sha is None else self.by_sha[sha]
        raw = await self.store.get_or_none(bucket_keys.order_json(order_id))
        if raw is None:
            # The allocator stores order.json before it emits a device: an image without one
            # comes from elsewhere (a test, a hand-made message) and is flashed as it is.
            return None
        name = decode_json(raw).get("firmware")
        if not name:
            self.by_order[order_id] = None
            return None
        head = await self.store.get_or_none(bundle_key(name))
        sha = hashlib.sha256(head).hexdigest() if head is not None else None
        if sha is None or sha not in self.by_sha:
            loaded = await load(self.store, name)
            if loaded is None:
                raise invalid("firmware", f"order {order_id}: unknown firmware bundle {name!r}")
            self.by_sha[loaded.sha256] = loaded
            sha = loaded.sha256
        self.by_order[order_id] = sha
        return self.by_sha[sha]


__all__ = [
    "BOOTLOADER_OFFSETS",
    "Bundle",
    "BundleFile",
    "FirmwareRef",
    "LoadedBundle",
    "OrderBundles",
    "bundle_key",
    "check_order",
    "layout_errors",
    "list_bundles",
    "load",
    "make_bundle",
    "order_errors",
    "order_firmware",
    "parse_offset",
    "store_bundle",
]
