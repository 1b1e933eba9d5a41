"""The Matter factory NVS partition: device data in, flashable partition image out.

Keys, types, encodings and order are those that Espressif's `esp-matter-mfg-tool` 1.0.29 writes
(sources/chip_nvs.py `CHIP_NVS_MAP` and sources/mfg_tool.py `add_optional_KVs`) and that
ESP-Matter's `ESP32FactoryDataProvider` / `ESP32Config` read, all in namespace `chip-factory`:

    discriminator u32, iteration-count u32, salt string (base64), vendor-id u32,
    vendor-name string, product-id u32, product-name string, hardware-ver u32,
    hw-ver-str string, mfg-date string, rd-id-uid hex2bin, product-finish u32 (enum value),
    product-color u32 (enum value), part-number string, serial-num string, dac-cert binary,
    dac-key binary (raw 32-byte scalar), dac-pub-key binary (65-byte uncompressed point),
    pai-cert binary, verifier string (base64), cert-dclrn binary, <extra chip-factory keys>,
    cal-types, locale-*, fl-*, sm-*/st-* (matter/device_info.py), product-label string,
    product-url string, then every other namespace of the extra entries.

Like the tool, the passcode itself is not written (only the SPAKE2+ verifier). Keeping the
tool's order makes our unencrypted image byte-identical to the tool's for the same inputs.

Which keys a partition holds depends on the order's `dac_storage` (the `modes` column of
FIELDS): `factory-nvs` writes all of them (the tool's default); `secure-cert` leaves out
dac-cert, dac-key, dac-pub-key and pai-cert (they go to the esp_secure_cert partition, as
with the tool's `--dac-in-secure-cert`); `on-module` leaves out the same four (the module holds
its DAC already, as with the tool run without `--pai`/`--paa`). In secure-cert mode the
commissionable data (discriminator, iteration-count, salt, verifier) and the rotating device ID
unique ID may also move to the esp_secure_cert partition (FactoryData's
`commissionable_in_secure_cert`, `rd_id_uid_in_secure_cert`, as the tool's
`--commissionable-data-in-secure-cert` / `--rd-id-uid-in-secure-cert`). With a dynamic
passcode the verifier is None and not written (the tool's `--enable-dynamic-passcode`).
`device-key` leaves out the same four as on-module (the device makes its key, and the station
writes the DAC issued over it afterwards, matter/csr.py).

The image is produced by `esp-idf-nvs-partition-gen` (multipage blob version 2) used as a
library writing into memory; encryption uses its own XTS-AES path (ESP-IDF NVS encryption,
key partition = XTS key pair ‖ CRC32, as its `generate-key` command writes).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import io
import secrets
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from esp_idf_nvs_partition_gen import nvs_partition_gen as _gen

from matterfab.errors import FieldError, InvalidInput, invalid
from matterfab.matter import device_info
from matterfab.matter.nvs_reader import decode_partition
from matterfab.matter.product import COLOR_NAMES, FINISH_NAMES, ProductColor, ProductFinish

__all__ = [
    "DAC_STORAGE_MODES",
    "DEFAULT_SIZE",
    "FACTORY_KEYS",
    "FIELDS",
    "MAX_NAME",
    "MAX_SIZE",
    "MIN_SIZE",
    "NAMESPACE",
    "PAGE_SIZE",
    "STRING_LIMITS",
    "DacStorage",
    "EntryType",
    "ExtraEntry",
    "FactoryData",
    "NvsField",
    "PartitionImage",
    "build_partition",
    "decode_partition",
    "entries_as_decoded",
    "factory_entries",
    "factory_keys",
    "generate_xts_keys",
    "keys_partition",
    "validate_extra_entry",
    "validate_factory_data",
    "validate_partition_size",
]

NAMESPACE = "chip-factory"
"""The NVS namespace ESP-Matter reads factory data from."""

DEFAULT_SIZE = 0x6000
"""The partition size esp-matter-mfg-tool and ESP-Matter's example partition tables use."""

PAGE_SIZE = 0x1000
MIN_SIZE = 0x3000  # read/write NVS needs >= 2 data pages + the reserved page (ESP-IDF docs)
# The generator takes any multiple of 0x1000 from 0x3000 up. 1 MiB is far above any factory
# partition (the tool's default is 0x6000; ESP-IDF scans every NVS page at boot) and bounds
# what one device costs: its image is built in memory and stored once per device.
MAX_SIZE = 0x100000
MAX_NAME = 15  # NVS_KEY_NAME_MAX_SIZE 16 including the NUL
MAX_STRING_BYTES = 3967  # one page: (126 - 1 header - 1) entries * 32 bytes, minus the NUL
XTS_KEY_SIZE = 64  # AES-256-XTS: data key ‖ tweak key
KEYS_PARTITION_SIZE = 0x1000

DacStorage = Literal["factory-nvs", "secure-cert", "on-module", "device-key"]
"""Where a device's DAC, DAC key and PAI live (the work order's `dac_storage`)."""
# Modes whose devices get no DAC when the order is built: on-module (the module holds one) and
# device-key (the device makes its key; the station fetches its DAC on the line, matter/csr.py).
NO_DAC_AT_BUILD: frozenset[str] = frozenset({"on-module", "device-key"})
DAC_STORAGE_MODES: tuple[DacStorage, ...] = get_args(DacStorage)
_EVERY_MODE: frozenset[DacStorage] = frozenset(DAC_STORAGE_MODES)
_DAC_IN_NVS: frozenset[DacStorage] = frozenset({"factory-nvs"})


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


Rule = Callable[[Any], str | None]
"""A value's check: None when it is good, else what it must be (`must be ...`)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int, message: str) -> Rule:
    return lambda v: None if _is_int(v) and low <= v <= high else message


def _bytes_len(low: int, high: int, message: str) -> Rule:
    return lambda v: None if low <= len(v) <= high else message


def _one_of(names: tuple[str, ...]) -> Rule:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


MFG_DATE_FORMS = "YYYY-MM-DD or YYYYMMDD, optionally followed by an 8-character vendor suffix"


def mfg_date_error(text: object) -> str | None:
    """None if `text` is one of the tool's mfg-date forms with a real date, else the rule.

    The tool (`--mfg-date`) takes YYYY-MM-DD (10), YYYYMMDD (8), and either followed by 8
    vendor characters (18 or 16; Matter's ManufacturingDate allows an 8-character suffix), and
    stores the text as given. Unlike the tool, the date part must be a real calendar date and
    the suffix printable ASCII.
    """
    message = f"must be {MFG_DATE_FORMS} (a real date)"
    if not isinstance(text, str) or not text.isascii():
        return message
    dashed = text[4:5] == "-"
    date_len = 10 if dashed else 8
    if len(text) not in (date_len, date_len + 8):
        return message
    day = text[:date_len]
    if dashed and (day[7:8] != "-"):
        return message
    digits = day.replace("-", "") if dashed else day
    if len(digits) != 8 or not digits.isdigit():
        return message
    try:
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return message
    suffix = text[date_len:]
    if suffix and not suffix.isprintable():
        return message
    return None


def _uncompressed_point(value: bytes) -> str | None:
    if len(value) == 65 and value[:1] == b"\x04":
        return None
    return "must be a 65-byte uncompressed point (04 ‖ X ‖ Y)"


def _not_empty(value: bytes) -> str | None:
    return None if value else "must not be empty"


_U16 = _int_in(0, 0xFFFF, "must be u16")


@dataclass(frozen=True)
class NvsField:
    """One chip-factory key: its FactoryData attribute, encoding, limit, rule and modes.

    Required or optional is FactoryData's: an attribute that defaults to None is optional
    (None: the key is not written); every other one is checked and written in its modes.
    """

    attribute: str  # FactoryData attribute holding the value
    key: str  # NVS key, as esp-matter-mfg-tool writes it and ESP-Matter reads it
    type: str  # NVS encoding: u32, string, hex2bin or binary
    limit: int | None = None  # strings: most characters allowed (Basic Information cluster)
    rule: Rule | None = None  # what else the value must be
    modes: frozenset[DacStorage] = _EVERY_MODE  # dac_storage modes whose partition holds it
    encode: Callable[[Any], str | int | bytes] | None = None  # value → what the type takes
    after_extras: bool = False  # the tool writes it after its --csv keys (our extra entries)

    def errors(self, value: Any) -> list[FieldError]:
        """Every rule `value` breaks, named by the attribute."""
        out: list[FieldError] = []
        if self.limit is not None:
            out += _check_string(value, self.attribute, self.limit)
            if value == "":
                out.append(FieldError(self.attribute, "must not be empty (omit it instead)"))
        problem = self.rule(value) if self.rule is not None and not out else None
        if problem is not None:
            out.append(FieldError(self.attribute, problem))
        return out


FIELDS: tuple[NvsField, ...] = (
    NvsField("discriminator", "discriminator", "u32", rule=_int_in(0, 0xFFF, "must be in 0..4095")),
    NvsField(
        "iteration_count",
        "iteration-count",
        "u32",
        rule=_int_in(1000, 100_000, "must be in 1000..100000"),
    ),
    NvsField(
        "salt", "salt", "string", rule=_bytes_len(16, 32, "must be 16..32 bytes"), encode=_b64
    ),
    NvsField("vendor_id", "vendor-id", "u32", rule=_U16),
    NvsField("vendor_name", "vendor-name", "string", 32),
    NvsField("product_id", "product-id", "u32", rule=_U16),
    NvsField("product_name", "product-name", "string", 32),
    NvsField("hardware_version", "hardware-ver", "u32", rule=_U16),
    NvsField("hardware_version_string", "hw-ver-str", "string", 64),
    NvsField("mfg_date", "mfg-date", "string", rule=mfg_date_error),
    NvsField(
        "rd_id_uid",
        "rd-id-uid",
        "hex2bin",
        rule=_bytes_len(16, 32, "must be 16..32 bytes"),
        encode=bytes.hex,
    ),
    NvsField(
        "product_finish",
        "product-finish",
        "u32",
        rule=_one_of(FINISH_NAMES),
        encode=lambda n: int(ProductFinish[n]),
    ),
    NvsField(
        "product_color",
        "product-color",
        "u32",
        rule=_one_of(COLOR_NAMES),
        encode=lambda n: int(ProductColor[n]),
    ),
    NvsField("part_number", "part-number", "string", 32),
    NvsField("serial_num", "serial-num", "string", 32),
    NvsField("dac_cert", "dac-cert", "binary", rule=_not_empty, modes=_DAC_IN_NVS),
    NvsField(
        "dac_key",
        "dac-key",
        "binary",
        rule=_bytes_len(32, 32, "must be the raw 32-byte private scalar"),
        modes=_DAC_IN_NVS,
    ),
    NvsField("dac_pub_key", "dac-pub-key", "binary", rule=_uncompressed_point, modes=_DAC_IN_NVS),
    NvsField("pai_cert", "pai-cert", "binary", rule=_not_empty, modes=_DAC_IN_NVS),
    NvsField(
        "verifier",
        "verifier",
        "string",
        rule=_bytes_len(97, 97, "must be 97 bytes (w0 32 ‖ L 65)"),
        encode=_b64,
    ),
    NvsField("cert_dclrn", "cert-dclrn", "binary", rule=_not_empty),
    NvsField("product_label", "product-label", "string", 64, after_extras=True),
    NvsField("product_url", "product-url", "string", 256, after_extras=True),
)
"""Every chip-factory key this module may write, in the tool's order (extras go between the
last key before `after_extras` ones and those), with the dac_storage modes that write it."""

FACTORY_KEYS = tuple(f.key for f in FIELDS)
"""Every chip-factory key this module may write, in the tool's order; extras may not reuse one."""


def factory_keys(dac_storage: DacStorage = "factory-nvs") -> tuple[str, ...]:
    """The chip-factory keys a partition of this dac_storage mode may hold, in order."""
    return tuple(f.key for f in FIELDS if dac_storage in f.modes)


# The encodings of the tool's --csv (mfg_gen): binary is its `file` type, whose bytes the work
# order carries as base64 text.
EntryType = Literal[
    "u8", "i8", "u16", "u32", "i32", "u64", "i64", "string", "hex2bin", "base64", "binary"
]
_INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 0xFF),
    "i8": (-0x80, 0x7F),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFFFFFF),
    "i32": (-0x80000000, 0x7FFFFFFF),
    "u64": (0, 0xFFFFFFFFFFFFFFFF),
    "i64": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}
_EXTRA_TYPES = (*_INT_RANGES, "string", "hex2bin", "base64", "binary")

Entry = tuple[str, str, str, "str | int | bytes"]
"""(namespace, key, type, value); type is an NVS encoding: u8/u16/u32/i32/string/hex2bin/
base64/binary; value is int, str (string, hex text for hex2bin, base64 text) or bytes (binary)."""


@dataclass(frozen=True)
class ExtraEntry:
    """One extra NVS entry from the work order's `extra_entries` (value resolved per device)."""

    namespace: str
    key: str
    type: EntryType
    value: str | int


@dataclass(frozen=True, kw_only=True)
class FactoryData:
    """Everything one device's factory partition holds (plus the passcode, which it does not)."""

    discriminator: int  # 12-bit setup discriminator
    passcode: int | None = None  # never written: the tool stores only the verifier
    iteration_count: int  # PBKDF2 iterations of the SPAKE2+ verifier
    salt: bytes  # PBKDF2 salt, 16..32 bytes
    verifier: bytes | None  # SPAKE2+ verifier w0 ‖ L, 97 bytes (None: dynamic passcode)
    dac_cert: bytes = b""  # DER (empty for on-module: no DAC issued)
    dac_key: bytes = b""  # raw 32-byte private scalar, big-endian
    dac_pub_key: bytes = b""  # 65-byte uncompressed point 04 ‖ X ‖ Y
    pai_cert: bytes = b""  # DER
    cert_dclrn: bytes  # Certification Declaration, CMS DER
    dac_storage: DacStorage = "factory-nvs"  # which keys the partition holds (FIELDS modes)
    vendor_id: int
    product_id: int
    vendor_name: str | None = None
    product_name: str | None = None
    hardware_version: int | None = None
    hardware_version_string: str | None = None
    serial_num: str | None = None
    mfg_date: str | None = None  # YYYY-MM-DD
    rd_id_uid: bytes | None = None  # rotating device ID unique ID, written only when set
    part_number: str | None = None
    product_label: str | None = None
    product_url: str | None = None
    product_finish: str | None = None  # ProductFinish name, e.g. "matte"
    product_color: str | None = None  # ProductColor name, e.g. "white"
    calendar_types: tuple[str, ...] | None = None  # CalendarTypeEnum names, lower case
    locales: tuple[str, ...] | None = None  # BCP 47 tags
    fixed_labels: tuple[device_info.FixedLabel, ...] | None = None
    supported_modes: tuple[device_info.SupportedMode, ...] | None = None
    extra: tuple[ExtraEntry, ...] = field(default=())
    # secure-cert only: these move to TLV 201 of the esp_secure_cert partition
    commissionable_in_secure_cert: bool = False  # discriminator, iteration-count, salt, verifier
    rd_id_uid_in_secure_cert: bool = False  # rd-id-uid


@dataclass(frozen=True)
class PartitionImage:
    """A built factory partition and, when encrypted, its NVS keys partition."""

    image: bytes
    keys: bytes | None  # 4096 bytes: XTS key pair (64) ‖ CRC32 (4) ‖ 0xFF fill


STRING_LIMITS: dict[str, int] = {f.attribute: f.limit for f in FIELDS if f.limit is not None}
"""Most characters of each string attribute (Basic Information cluster): the work order's limits."""

# The verifier has no default (forgetting it is a bug) but may be None: a dynamic passcode.
_OPTIONAL = frozenset(f.name for f in dataclasses.fields(FactoryData) if f.default is None) | {
    "verifier"
}
COMMISSIONABLE_KEYS = frozenset({"discriminator", "iteration-count", "salt", "verifier"})
"""The keys `commissionable_in_secure_cert` moves to the esp_secure_cert partition."""


def _moved_keys(data: FactoryData) -> frozenset[str]:
    """chip-factory keys that `data` keeps out of NVS (they live in esp_secure_cert)."""
    if data.dac_storage != "secure-cert":
        return frozenset()
    moved: set[str] = set()
    if data.commissionable_in_secure_cert:
        moved |= COMMISSIONABLE_KEYS
    if data.rd_id_uid_in_secure_cert:
        moved.add("rd-id-uid")
    return frozenset(moved)


def _check_name(value: object, field: str, what: str) -> list[FieldError]:
    # NVS keys are fixed 16-byte NUL-terminated C strings; the library slices by len(str), so
    # anything but printable ASCII would corrupt the entry.
    if not isinstance(value, str) or not value:
        return [FieldError(field, f"{what} must be a non-empty string")]
    if len(value) > MAX_NAME:
        return [FieldError(field, f"{what} must be at most {MAX_NAME} characters (NVS limit)")]
    if not (value.isascii() and value.isprintable()):
        return [FieldError(field, f"{what} must be printable ASCII")]
    return []


def _check_string(value: object, field: str, max_chars: int = MAX_STRING_BYTES) -> list[FieldError]:
    if not isinstance(value, str):
        return [FieldError(field, "must be a string")]
    if "\0" in value:
        return [FieldError(field, "must not contain NUL characters (NVS strings end at NUL)")]
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"): no UTF-8 for it
        return [FieldError(field, "must be valid Unicode (no lone surrogate code points)")]
    if len(value) > max_chars or len(encoded) > MAX_STRING_BYTES:
        return [FieldError(field, f"must be at most {max_chars} characters")]
    return []


def _normalise_extra_value(entry: ExtraEntry) -> str | int | bytes:
    """The value in the form the library takes; assumes validate_extra_entry passed."""
    if entry.type in _INT_RANGES and isinstance(entry.value, str):
        return int(entry.value, 0)
    if entry.type == "binary":
        return base64.b64decode(str(entry.value))
    return entry.value


def validate_extra_entry(e: ExtraEntry, field: str) -> None:
    """Raise InvalidInput unless `e` can be written: names, type and a value fitting the type."""
    errors = _check_name(e.namespace, f"{field}.namespace", "namespace")
    errors += _check_name(e.key, f"{field}.key", "key")
    if e.type not in _EXTRA_TYPES:
        errors.append(FieldError(f"{field}.type", f"must be one of {', '.join(_EXTRA_TYPES)}"))
    else:
        errors += _check_extra_value(e, f"{field}.value")
    if errors:
        raise InvalidInput(errors)


def _check_extra_value(e: ExtraEntry, field: str) -> list[FieldError]:
    value = e.value
    if e.type in _INT_RANGES:
        low, high = _INT_RANGES[e.type]
        if isinstance(value, str):  # accept integer literals from JSON/CSV, e.g. "-12", "0x1F"
            try:
                value = int(value, 0)
            except ValueError:
                return [FieldError(field, f"must be an integer for type {e.type}")]
        if isinstance(value, bool) or not isinstance(value, int):
            return [FieldError(field, f"must be an integer for type {e.type}")]
        if not low <= value <= high:
            return [FieldError(field, f"must be in {low}..{high} for type {e.type}")]
        return []
    if not isinstance(value, str):
        return [FieldError(field, f"must be a string for type {e.type}")]
    if e.type == "string":
        return _check_string(value, field)
    if e.type == "hex2bin":
        if len(value) % 2 or not all(c in "0123456789abcdefABCDEF" for c in value):
            return [FieldError(field, "must be hex digits, an even number of them")]
        return []
    try:  # base64, and binary (a file's bytes, as base64 text)
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return [FieldError(field, "must be valid base64")]
    return []


def validate_partition_size(size: int, field: str = "partition.size") -> None:
    """Raise InvalidInput unless `size` is a multiple of 0x1000 in MIN_SIZE..MAX_SIZE."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise invalid(field, "must be an integer")
    if size % PAGE_SIZE:
        raise invalid(field, "must be a multiple of 0x1000 (4096, one flash sector)")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise invalid(
            field,
            f"must be at least {MIN_SIZE:#x} (two NVS pages + the reserved page) "
            f"and at most {MAX_SIZE:#x}",
        )


def validate_factory_data(data: FactoryData) -> None:
    """Raise InvalidInput listing every field of `data` that cannot be encoded as the tool does.

    Each FIELDS entry of `data`'s dac_storage mode checks its own value (optional ones only
    when set); then the extra entries, which may not shadow a chip-factory key.
    """
    errors: list[FieldError] = []
    if data.dac_storage not in DAC_STORAGE_MODES:
        modes = ", ".join(DAC_STORAGE_MODES)
        errors.append(FieldError("dac_storage", f"must be one of {modes}"))
    for f in FIELDS:
        value = getattr(data, f.attribute)
        # Keys of every mode are checked even when dac_storage itself is wrong.
        held = data.dac_storage in f.modes or f.modes == _EVERY_MODE
        if held and not (value is None and f.attribute in _OPTIONAL):
            errors += f.errors(value)
    errors += _device_info_errors(data)
    seen = {(NAMESPACE, key) for key in FACTORY_KEYS}
    seen |= {(NAMESPACE, key) for key, _, _ in _device_info_entries(data)}
    for i, extra in enumerate(data.extra):
        where = f"extra[{i}]"
        try:
            validate_extra_entry(extra, where)
        except InvalidInput as exc:
            errors += exc.errors
            continue
        if (extra.namespace, extra.key) in seen:
            message = f"duplicates key {extra.key!r} in namespace {extra.namespace!r}"
            errors.append(FieldError(f"{where}.key", message))
        seen.add((extra.namespace, extra.key))
    if errors:
        raise InvalidInput(errors)


def _device_info_errors(data: FactoryData) -> list[FieldError]:
    errors = device_info.calendar_errors(data.calendar_types or (), "calendar_types")
    errors += device_info.locale_errors(data.locales or (), "locales")
    errors += device_info.fixed_label_errors(data.fixed_labels or (), "fixed_labels")
    errors += device_info.supported_mode_errors(data.supported_modes or (), "supported_modes")
    return errors


def _device_info_entries(data: FactoryData) -> list[device_info.Entry]:
    try:
        return device_info.entries(
            data.calendar_types, data.locales, data.fixed_labels, data.supported_modes
        )
    except (KeyError, TypeError, ValueError):  # invalid lists: reported by _device_info_errors
        return []


def _field_entries(data: FactoryData, after_extras: bool) -> list[Entry]:
    """The FIELDS entries of `data`'s mode on one side of the extras (unset optionals skipped)."""
    out: list[Entry] = []
    moved = _moved_keys(data)
    for f in FIELDS:
        if f.after_extras != after_extras or data.dac_storage not in f.modes or f.key in moved:
            continue
        value = getattr(data, f.attribute)
        if value is None:
            continue
        out.append((NAMESPACE, f.key, f.type, f.encode(value) if f.encode else value))
    return out


def factory_entries(data: FactoryData) -> list[Entry]:
    """The partition's entries as (namespace, key, type, value), in the tool's exact order.

    Raises InvalidInput like build_partition when `data` cannot be encoded.

    Extra entries in `chip-factory` go where the tool puts its `--csv` keys (after
    `cert-dclrn`, before `product-label`); other namespaces follow, each in first-seen order.
    Keys whose FIELDS modes exclude `data.dac_storage` are left out.
    """
    validate_factory_data(data)
    return _entries(data)


def _entries(data: FactoryData) -> list[Entry]:
    extra_ns: dict[str, list[Entry]] = {}
    for e in data.extra:
        extra_ns.setdefault(e.namespace, []).append(
            (e.namespace, e.key, e.type, _normalise_extra_value(e))
        )
    info = device_info.entries(
        data.calendar_types, data.locales, data.fixed_labels, data.supported_modes
    )
    out = (
        _field_entries(data, after_extras=False)
        + extra_ns.pop(NAMESPACE, [])
        + [(NAMESPACE, key, kind, value) for key, kind, value in info]
        + _field_entries(data, after_extras=True)
    )
    for entries in extra_ns.values():
        out += entries
    return out


def entries_as_decoded(entries: list[Entry]) -> dict[str, dict[str, tuple[str, object]]]:
    """What decode_partition returns for an image holding `entries` (to verify a build)."""
    out: dict[str, dict[str, tuple[str, object]]] = {}
    for ns, key, kind, value in entries:
        decoded: tuple[str, object]
        if kind == "string":
            decoded = ("string", value)
        elif kind == "hex2bin":
            decoded = ("blob", bytes.fromhex(str(value)))
        elif kind == "base64":
            decoded = ("blob", base64.b64decode(str(value)))
        elif kind == "binary":
            decoded = ("blob", bytes(value) if isinstance(value, bytes) else value)
        else:
            decoded = (kind, value)
        out.setdefault(ns, {})[key] = decoded
    return out


def generate_xts_keys() -> bytes:
    """A fresh NVS encryption key pair (data key ‖ tweak key, 64 bytes) from the OS CSPRNG."""
    while True:
        key = secrets.token_bytes(XTS_KEY_SIZE)
        if key[:32] != key[32:]:  # XTS rejects equal halves; astronomically unlikely anyway
            return key


def keys_partition(xts_key: bytes) -> bytes:
    """The NVS keys partition for `xts_key`: key ‖ CRC32 (LE) ‖ 0xFF, one 4096-byte sector.

    Same layout as nvs_partition_gen `generate-key` and ESP-IDF's nvs_flash_read_security_cfg
    (eky ‖ tky ‖ crc32_le(0xFFFFFFFF, eky ‖ tky)).
    """
    _check_xts_key(xts_key)
    crc = zlib.crc32(xts_key, 0xFFFFFFFF) & 0xFFFFFFFF
    body = xts_key + struct.pack("<I", crc)
    return body + b"\xff" * (KEYS_PARTITION_SIZE - len(body))


def _check_xts_key(xts_key: bytes) -> None:
    if len(xts_key) != XTS_KEY_SIZE:
        raise invalid("partition.xts_key", "must be 64 bytes (AES-256-XTS data key ‖ tweak key)")
    if xts_key[:32] == xts_key[32:]:
        raise invalid("partition.xts_key", "halves must differ (XTS requirement)")


def build_partition(
    data: FactoryData, size: int = DEFAULT_SIZE, *, xts_key: bytes | None = None
) -> PartitionImage:
    """Build the factory partition image (encrypted with `xts_key` when given).

    Deterministic: the same data and key give the same bytes, so a rebuild after a redelivery
    matches the write-once object already stored.
    """
    validate_partition_size(size)
    validate_factory_data(data)
    if xts_key is not None:
        _check_xts_key(xts_key)
    entries = _entries(data)
    image = _write(entries, size, xts_key)
    if image is None:
        needed = _needed_size(entries)
        raise invalid(
            "partition.size",
            f"is too small: this device's data needs at least {needed:#x} ({needed}) bytes "
            f"including the reserved page, got {size:#x}",
        )
    keys = keys_partition(xts_key) if xts_key is not None else None
    return PartitionImage(image=image, keys=keys)


def _open(size: int, xts_key: bytes | None) -> Any:
    # The library reserves the last page itself only in its CLI (check_size); as a library it
    # takes the size available for data pages, and nvs_close appends the reserved page.
    return _gen.nvs_open(
        io.BytesIO(),
        size - PAGE_SIZE,
        _gen.Page.VERSION2,
        is_encrypt=xts_key is not None,
        key=xts_key,
    )


def _write(entries: list[Entry], size: int, xts_key: bytes | None) -> bytes | None:
    """Write entries through the library; None when they do not fit in `size`."""
    nvs = _open(size, xts_key)
    try:
        _fill(nvs, entries)
        _gen.nvs_close(nvs)
    except _gen.InsufficientSizeError:
        return None
    out: io.BytesIO = nvs.fout
    return out.getvalue()


def _fill(nvs: Any, entries: list[Entry]) -> None:
    current_ns = None
    for ns, key, kind, value in entries:
        if ns != current_ns:
            nvs.write_namespace(ns)
            current_ns = ns
        # NVS.write_entry, not the module-level write_entry: that wrapper silently adds
        # Wi-Fi entries for keys named sta.ssid / ap.ssid and reads files for type "file".
        try:
            nvs.write_entry(key, value, kind)
        except _gen.InputError as exc:  # size limits the library checks on its own
            raise invalid(f"{ns}.{key}", str(exc).strip()) from None


def _needed_size(entries: list[Entry]) -> int:
    """The smallest partition size the entries fit in (data pages + the reserved page)."""
    payload = sum(len(v) if isinstance(v, bytes | str) else 8 for *_, v in entries)
    generous = PAGE_SIZE * (len(entries) + payload // 2000 + 4)
    nvs = _open(generous, None)
    _fill(nvs, entries)
    return max(MIN_SIZE, (len(nvs.pages) + 1) * PAGE_SIZE)
