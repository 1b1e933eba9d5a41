"""Device-information lists of the factory partition: calendar types, locales, fixed labels and
supported modes, written exactly as esp-matter-mfg-tool 1.0.29 writes them (sources/mfg_tool.py
`add_optional_KVs`) and ESP-Matter's `ESP32DeviceInfoProvider` reads them (ESP32Config keys
`cal-types`, `locale-sz`, `locale/%x`, `fl-sz/%x`, `fl-k/%x/%x`, `fl-v/%x/%x`, `sm-sz/%x`,
`sm-label/%x/%x`, `sm-mode/%x/%x`, `sm-st-sz/%x/%x`, `st-v/%x/%x/%x`, `st-mfg/%x/%x/%x`):

    cal-types u32            bit n set for CalendarTypeEnum value n
    locale-sz u32, locale/<i> string                          (i in hex)
    per endpoint, in first-seen order:
      fl-sz/<ep> u32, then fl-k/<ep>/<i> string, fl-v/<ep>/<i> string per label
    per endpoint, in first-seen order:
      sm-sz/<ep> u32, then per mode: sm-label/<ep>/<i> string, sm-mode/<ep>/<i> u32,
      sm-st-sz/<ep>/<i> u32, then per tag st-v/<ep>/<i>/<j> u32, st-mfg/<ep>/<i>/<j> u32

Unlike the tool, every value is checked against the Matter limits the firmware reads with
(bugs 10 and 11 of the reference: the tool checks the endpoint as hex and parses it as decimal,
caps labels at 15 characters, and does not validate supported modes at all).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TypeVar

from matterfab.errors import FieldError

# Matter Core 1.3 §11.5 Localization Configuration: ActiveLocale/SupportedLocales at most 35.
LOCALE_MAX = 35
# §9.8 Fixed Label cluster, LabelStruct: label and value at most 16 characters each.
FIXED_LABEL_MAX = 16
# §1.9 Mode Select cluster (Application Cluster Library), ModeOptionStruct label ≤ 64.
MODE_LABEL_MAX = 64
ENDPOINT_MAX = 0xFFFE  # endpoint IDs are u16; 0xFFFF is the wildcard
# NVS keys are at most 15 characters: `st-mfg/ep/i/j` with hex parts must fit.
_NVS_KEY_MAX = 15

Entry = tuple[str, str, int | str]
"""(key, type, value): one chip-factory entry (type u32 or string)."""


class CalendarType(enum.IntEnum):
    """CalendarTypeEnum (Matter Core §11.4.5.2 Time Format Localization), the tool's choices."""

    buddhist = 0
    chinese = 1
    coptic = 2
    ethiopian = 3
    gregorian = 4
    hebrew = 5
    indian = 6
    islamic = 7
    japanese = 8
    korean = 9
    persian = 10
    taiwanese = 11


CALENDAR_NAMES: tuple[str, ...] = tuple(m.name for m in CalendarType)
"""Every accepted calendar type name (lower case), in enum order."""


@dataclass(frozen=True)
class FixedLabel:
    """One Fixed Label cluster entry of an endpoint."""

    endpoint: int
    label: str
    value: str


@dataclass(frozen=True)
class SemanticTag:
    """A semantic tag of a supported mode: its value and manufacturer code."""

    value: int
    mfg_code: int


@dataclass(frozen=True)
class SupportedMode:
    """One Mode Select option of an endpoint."""

    endpoint: int
    label: str
    mode: int
    tags: tuple[SemanticTag, ...] = ()


# BCP 47 (RFC 5646 §2.1) `langtag` and private-use tags; irregular grandfathered tags are not
# accepted (no Matter locale uses them).
_ALPHANUM = "[A-Za-z0-9]"
_LANGTAG = re.compile(
    r"^(?:"
    r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4}|[A-Za-z]{5,8})"  # language (+extlang)
    r"(?:-[A-Za-z]{4})?"  # script
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"  # region
    rf"(?:-(?:{_ALPHANUM}{{5,8}}|[0-9]{_ALPHANUM}{{3}}))*"  # variants
    rf"(?:-[0-9A-WY-Za-wy-z](?:-{_ALPHANUM}{{2,8}})+)*"  # extensions
    rf"(?:-x(?:-{_ALPHANUM}{{1,8}})+)?"  # private use
    rf"|x(?:-{_ALPHANUM}{{1,8}})+"
    r")$"
)


def is_bcp47(tag: str) -> bool:
    """Whether `tag` is a well-formed BCP 47 language tag (RFC 5646 §2.1 syntax)."""
    return bool(_LANGTAG.match(tag)) and len(tag) <= LOCALE_MAX


def calendar_bitmap(names: tuple[str, ...]) -> int:
    """The `cal-types` u32: bit n set for each CalendarTypeEnum value n named."""
    bits = 0
    for name in names:
        bits |= 1 << CalendarType[name]
    return bits


def _text_errors(value: str, field: str, limit: int) -> list[FieldError]:
    if not value:
        return [FieldError(field, "must not be empty")]
    if len(value) > limit:
        return [FieldError(field, f"must be at most {limit} characters")]
    if "\0" in value or not value.isprintable():
        return [FieldError(field, "must be printable text (no NUL or control characters)")]
    return []


def _int_errors(value: int, field: str, low: int, high: int) -> list[FieldError]:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return [FieldError(field, f"must be an integer in {low}..{high}")]
    return []


def calendar_errors(names: tuple[str, ...], field: str) -> list[FieldError]:
    """Every unknown or repeated calendar type name."""
    errors: list[FieldError] = []
    for i, name in enumerate(names):
        if name not in CALENDAR_NAMES:
            errors.append(
                FieldError(f"{field}[{i}]", f"must be one of {', '.join(CALENDAR_NAMES)}")
            )
        elif name in names[:i]:
            errors.append(FieldError(f"{field}[{i}]", "repeats a calendar type"))
    return errors


def locale_errors(locales: tuple[str, ...], field: str) -> list[FieldError]:
    """Every locale that is not a BCP 47 tag of at most 35 characters, or repeats one."""
    errors: list[FieldError] = []
    for i, tag in enumerate(locales):
        if not isinstance(tag, str) or not is_bcp47(tag):
            errors.append(
                FieldError(
                    f"{field}[{i}]",
                    f"must be a BCP 47 language tag (e.g. en-US) of at most {LOCALE_MAX} "
                    "characters",
                )
            )
        elif tag.lower() in (t.lower() for t in locales[:i]):
            errors.append(FieldError(f"{field}[{i}]", "repeats a locale"))
    return errors


def _key_fits(key: str, field: str) -> list[FieldError]:
    if len(key) > _NVS_KEY_MAX:
        return [FieldError(field, f"makes NVS key {key!r} longer than {_NVS_KEY_MAX} characters")]
    return []


def fixed_label_errors(labels: tuple[FixedLabel, ...], field: str) -> list[FieldError]:
    """Every fixed label whose endpoint, label or value breaks a Matter limit."""
    errors: list[FieldError] = []
    per_endpoint: dict[int, int] = {}
    for i, fl in enumerate(labels):
        where = f"{field}[{i}]"
        errors += _int_errors(fl.endpoint, f"{where}.endpoint", 0, ENDPOINT_MAX)
        errors += _text_errors(fl.label, f"{where}.label", FIXED_LABEL_MAX)
        errors += _text_errors(fl.value, f"{where}.value", FIXED_LABEL_MAX)
        if not errors:
            n = per_endpoint.get(fl.endpoint, 0)
            per_endpoint[fl.endpoint] = n + 1
            errors += _key_fits(f"fl-k/{fl.endpoint:x}/{n:x}", where)
    return errors


def supported_mode_errors(modes: tuple[SupportedMode, ...], field: str) -> list[FieldError]:
    """Every supported mode whose endpoint, label, mode or tags break a Matter limit."""
    errors: list[FieldError] = []
    per_endpoint: dict[int, int] = {}
    for i, m in enumerate(modes):
        where = f"{field}[{i}]"
        errors += _int_errors(m.endpoint, f"{where}.endpoint", 0, ENDPOINT_MAX)
        errors += _text_errors(m.label, f"{where}.label", MODE_LABEL_MAX)
        errors += _int_errors(m.mode, f"{where}.mode", 0, 0xFF)  # ModeOptionStruct.Mode u8
        for j, t in enumerate(m.tags):
            errors += _int_errors(t.value, f"{where}.tags[{j}].value", 0, 0xFFFF)
            errors += _int_errors(t.mfg_code, f"{where}.tags[{j}].mfg_code", 0, 0xFFFF)
        if not errors:
            n = per_endpoint.get(m.endpoint, 0)
            per_endpoint[m.endpoint] = n + 1
            last = max(len(m.tags) - 1, 0)
            errors += _key_fits(f"st-mfg/{m.endpoint:x}/{n:x}/{last:x}", where)
            errors += _key_fits(f"sm-label/{m.endpoint:x}/{n:x}", where)
    return errors


_Item = TypeVar("_Item", FixedLabel, SupportedMode)


def _by_endpoint(items: tuple[_Item, ...]) -> dict[int, list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.endpoint, []).append(item)
    return groups


def entries(
    calendar_types: tuple[str, ...] | None,
    locales: tuple[str, ...] | None,
    fixed_labels: tuple[FixedLabel, ...] | None,
    supported_modes: tuple[SupportedMode, ...] | None,
) -> list[Entry]:
    """The chip-factory entries of these lists, in the tool's order (None or empty: none)."""
    out: list[Entry] = []
    if calendar_types:
        out.append(("cal-types", "u32", calendar_bitmap(calendar_types)))
    if locales:
        out.append(("locale-sz", "u32", len(locales)))
        out += [(f"locale/{i:x}", "string", tag) for i, tag in enumerate(locales)]
    for ep, labels in _by_endpoint(fixed_labels or ()).items():
        out.append((f"fl-sz/{ep:x}", "u32", len(labels)))
        for i, fl in enumerate(labels):
            out.append((f"fl-k/{ep:x}/{i:x}", "string", fl.label))
            out.append((f"fl-v/{ep:x}/{i:x}", "string", fl.value))
    for ep, modes in _by_endpoint(supported_modes or ()).items():
        out.append((f"sm-sz/{ep:x}", "u32", len(modes)))
        for i, m in enumerate(modes):
            out.append((f"sm-label/{ep:x}/{i:x}", "string", m.label))
            out.append((f"sm-mode/{ep:x}/{i:x}", "u32", m.mode))
            out.append((f"sm-st-sz/{ep:x}/{i:x}", "u32", len(m.tags)))
            for j, t in enumerate(m.tags):
                out.append((f"st-v/{ep:x}/{i:x}/{j:x}", "u32", t.value))
                out.append((f"st-mfg/{ep:x}/{i:x}/{j:x}", "u32", t.mfg_code))
    return out
