"""Minimal Matter TLV encoder and decoder (Matter Core Specification, Appendix A).

Enough of the format for the Certification Declaration content (§6.3.1): signed and unsigned
integers, booleans, null, UTF-8 and octet strings, structures, arrays and lists, with anonymous
or context-specific tags. Floating point numbers and profile tags are rejected with a clear
error rather than guessed at.

An element starts with a control octet: the top 3 bits are the tag control (A.7.1: 0 anonymous,
1 context-specific with a 1-octet tag, 2..7 profile tag forms), the low 5 bits the element type
(A.7.2, table `_T_*` below). Multi-octet values are little-endian. Containers end with 0x18.

Python mapping (so decode(encode(v)) == v holds exactly):
  `UInt(n)` unsigned integer, `int` signed integer, `bool`, `None` null, `str` UTF-8 string,
  `bytes` octet string, `Structure` / `TlvList` members as (tag, value) pairs, `Array` items.
Integers are written in the narrowest width that holds them, as the Matter SDK writer does;
the decoder accepts any width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from matterfab.errors import invalid

FIELD = "tlv"

# Tag control (upper 3 bits of the control octet), A.7.1.
_TAG_ANONYMOUS = 0x00
_TAG_CONTEXT = 0x20
# Element types (lower 5 bits), A.7.2.
_T_INT = 0x00  # 0x00..0x03: signed, 1/2/4/8 octets
_T_UINT = 0x04  # 0x04..0x07: unsigned, 1/2/4/8 octets
_T_FALSE = 0x08
_T_TRUE = 0x09
_T_FLOAT32 = 0x0A
_T_FLOAT64 = 0x0B
_T_UTF8 = 0x0C  # 0x0C..0x0F: length field 1/2/4/8 octets
_T_BYTES = 0x10  # 0x10..0x13: length field 1/2/4/8 octets
_T_NULL = 0x14
_T_STRUCTURE = 0x15
_T_ARRAY = 0x16
_T_LIST = 0x17
_T_END = 0x18

_WIDTHS = (1, 2, 4, 8)  # the width selector is the low 2 bits of the type
_MAX_DEPTH = 16  # CD content nests two levels; a bound keeps hostile input from recursing deep


@dataclass(frozen=True)
class UInt:
    """An unsigned TLV integer (a plain Python int encodes as a signed one)."""

    value: int


Tag = int | None  # None: anonymous; 0..255: context-specific tag


@dataclass(frozen=True)
class Structure:
    """A TLV structure: members with distinct tags, written in the order given."""

    members: tuple[tuple[Tag, Value], ...]

    def get(self, tag: int) -> Value | _Missing:
        """The member with context tag `tag`, or MISSING."""
        for member_tag, value in self.members:
            if member_tag == tag:
                return value
        return MISSING


@dataclass(frozen=True)
class Array:
    """A TLV array: anonymous elements in order."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class TlvList:
    """A TLV list: ordered members, each anonymous or tagged."""

    members: tuple[tuple[Tag, Value], ...]


class _Missing:
    """Sentinel type for an absent structure member (None is a valid TLV null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()

Value = Union[UInt, int, bool, None, str, bytes, Structure, Array, TlvList]  # noqa: UP007


def encode(value: Value, tag: Tag = None) -> bytes:
    """Encode one element (anonymous unless `tag` is a context tag 0..255) as Matter TLV."""
    out = bytearray()
    _encode_into(out, tag, value, 0)
    return bytes(out)


def decode(data: bytes) -> Value:
    """Decode exactly one anonymous top-level element; trailing bytes are an error."""
    tag, value, pos = _decode_element(data, 0, 0)
    if tag is not None:
        raise invalid(FIELD, "the top-level element must be anonymous")
    if pos != len(data):
        raise invalid(FIELD, f"{len(data) - pos} trailing byte(s) after the top-level element")
    return value


def _control(tag: Tag, element_type: int) -> bytes:
    if tag is None:
        return bytes((_TAG_ANONYMOUS | element_type,))
    if not 0 <= tag <= 0xFF:
        raise invalid(FIELD, f"context tag must be 0..255, got {tag}")
    return bytes((_TAG_CONTEXT | element_type, tag))


def _width_for_unsigned(n: int) -> int:
    for i, width in enumerate(_WIDTHS):
        if n < 1 << (8 * width):
            return i
    raise invalid(FIELD, f"unsigned integer {n} does not fit in 64 bits")


def _width_for_signed(n: int) -> int:
    for i, width in enumerate(_WIDTHS):
        if -(1 << (8 * width - 1)) <= n < 1 << (8 * width - 1):
            return i
    raise invalid(FIELD, f"signed integer {n} does not fit in 64 bits")


def _encode_into(out: bytearray, tag: Tag, value: Value, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise invalid(FIELD, f"nesting deeper than {_MAX_DEPTH} levels")
    # bool before int: bool is a subclass of int in Python.
    if isinstance(value, bool):
        out += _control(tag, _T_TRUE if value else _T_FALSE)
    elif value is None:
        out += _control(tag, _T_NULL)
    elif isinstance(value, UInt):
        if value.value < 0:
            raise invalid(FIELD, f"unsigned integer must be >= 0, got {value.value}")
        sel = _width_for_unsigned(value.value)
        out += _control(tag, _T_UINT + sel)
        out += value.value.to_bytes(_WIDTHS[sel], "little")
    elif isinstance(value, int):
        sel = _width_for_signed(value)
        out += _control(tag, _T_INT + sel)
        out += value.to_bytes(_WIDTHS[sel], "little", signed=True)
    elif isinstance(value, str | bytes):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        sel = _width_for_unsigned(len(raw))
        out += _control(tag, (_T_UTF8 if isinstance(value, str) else _T_BYTES) + sel)
        out += len(raw).to_bytes(_WIDTHS[sel], "little")
        out += raw
    elif isinstance(value, Structure | TlvList):
        is_struct = isinstance(value, Structure)
        out += _control(tag, _T_STRUCTURE if is_struct else _T_LIST)
        seen: set[int] = set()
        for member_tag, member in value.members:
            if is_struct:
                # A.11.1: structure members carry distinct, non-anonymous tags.
                if member_tag is None or member_tag in seen:
                    raise invalid(FIELD, "structure members need distinct non-anonymous tags")
                seen.add(member_tag)
            _encode_into(out, member_tag, member, depth + 1)
        out.append(_T_END)
    elif isinstance(value, Array):
        out += _control(tag, _T_ARRAY)
        for item in value.items:
            _encode_into(out, None, item, depth + 1)
        out.append(_T_END)
    else:
        raise invalid(FIELD, f"cannot encode a {type(value).__name__} as TLV")


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    end = pos + n
    if end > len(data):
        raise invalid(FIELD, f"truncated: needed {n} byte(s) at offset {pos}")
    return data[pos:end], end


def _decode_element(data: bytes, pos: int, depth: int) -> tuple[Tag, Value, int]:
    if depth > _MAX_DEPTH:
        raise invalid(FIELD, f"nesting deeper than {_MAX_DEPTH} levels")
    raw, pos = _take(data, pos, 1)
    control = raw[0]
    tag_control, element_type = control & 0xE0, control & 0x1F
    tag: Tag
    if tag_control == _TAG_ANONYMOUS:
        tag = None
    elif tag_control == _TAG_CONTEXT:
        raw, pos = _take(data, pos, 1)
        tag = raw[0]
    else:
        raise invalid(FIELD, f"unsupported tag form 0x{tag_control:02x} at offset {pos - 1}")
    value: Value
    if element_type <= 0x03 or 0x04 <= element_type <= 0x07:
        width = _WIDTHS[element_type & 0x03]
        raw, pos = _take(data, pos, width)
        signed = element_type <= 0x03
        number = int.from_bytes(raw, "little", signed=signed)
        value = number if signed else UInt(number)
    elif element_type in (_T_FALSE, _T_TRUE):
        value = element_type == _T_TRUE
    elif element_type == _T_NULL:
        value = None
    elif _T_UTF8 <= element_type <= 0x13:
        raw, pos = _take(data, pos, _WIDTHS[element_type & 0x03])
        raw, pos = _take(data, pos, int.from_bytes(raw, "little"))
        if element_type < _T_BYTES:
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise invalid(FIELD, f"UTF-8 string is not valid UTF-8 ({exc.reason})") from exc
        else:
            value = raw
    elif element_type in (_T_STRUCTURE, _T_ARRAY, _T_LIST):
        members: list[tuple[Tag, Value]] = []
        while True:
            if pos >= len(data):
                raise invalid(FIELD, "truncated: container has no end-of-container marker")
            if data[pos] == _T_END:
                pos += 1
                break
            member_tag, member, pos = _decode_element(data, pos, depth + 1)
            members.append((member_tag, member))
        value = _container(element_type, members)
    elif element_type in (_T_FLOAT32, _T_FLOAT64):
        raise invalid(FIELD, f"floating point elements are not supported (offset {pos - 1})")
    else:
        raise invalid(FIELD, f"unexpected element type 0x{element_type:02x} at offset {pos - 1}")
    return tag, value, pos


def _container(element_type: int, members: list[tuple[Tag, Value]]) -> Value:
    if element_type == _T_ARRAY:
        if any(tag is not None for tag, _ in members):
            raise invalid(FIELD, "array elements must be anonymous")
        return Array(tuple(v for _, v in members))
    if element_type == _T_LIST:
        return TlvList(tuple(members))
    tags = [tag for tag, _ in members]
    if None in tags or len(set(tags)) != len(tags):
        raise invalid(FIELD, "structure members need distinct non-anonymous tags")
    return Structure(tuple(members))


__all__ = [
    "MISSING",
    "Array",
    "Structure",
    "Tag",
    "TlvList",
    "UInt",
    "Value",
    "decode",
    "encode",
]
