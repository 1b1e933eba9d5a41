"""Onboarding payload codecs: the `MT:` QR code payload and the manual pairing code.

Matter Core Specification §5.1.3 (QR code) and §5.1.4 (manual pairing code).

QR code payload (§5.1.3.1): the fields of `_QR_LAYOUT` are packed least-significant bit first
into an 88-bit little-endian integer (11 bytes), which is written in Base38 (§5.1.3.2) after
the prefix "MT:". Base38 takes the bytes in chunks of 3 (the last chunk may hold 2 or 1), reads
each chunk as a little-endian integer and writes it as 5 (4, 2) base-38 digits, least
significant digit first. 11 bytes give 3 chunks of 3 and one of 2: 19 characters.
Optional TLV data after the 88 bits and concatenated payloads ("*") are not supported here.

Manual pairing code (§5.1.4.1), decimal digits:

    digit 1      (vid_pid_present << 2) | (short_discriminator >> 2)
    digits 2-6   ((short_discriminator & 0b11) << 14) | (passcode & 0x3FFF)    5 digits
    digits 7-10  passcode >> 14                                                 4 digits
    [digits 11-15 vendor ID, 16-20 product ID]   only when vid_pid_present      5 + 5 digits
    last digit   Verhoeff check digit over all previous digits

The short discriminator is the upper 4 bits of the 12-bit discriminator. VID and PID are
present exactly when the commissioning flow is not Standard.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import cast

from stdnum import verhoeff

from matterfab.errors import FieldError, InvalidInput, invalid
from matterfab.matter.identity import (
    validate_discriminator,
    validate_passcode,
)

QR_PREFIX = "MT:"
PAYLOAD_VERSION = 0  # §5.1.3.1: the only defined version

# Bit layout of the QR payload, least significant bits first (§5.1.3.1, Table "Packed Binary
# Data Structure for Onboarding Payload").
_QR_LAYOUT: tuple[tuple[str, int], ...] = (
    ("version", 3),
    ("vendor_id", 16),
    ("product_id", 16),
    ("flow", 2),
    ("discovery", 8),
    ("discriminator", 12),
    ("passcode", 27),
    ("padding", 4),
)
_QR_BITS = sum(width for _, width in _QR_LAYOUT)  # 88
_QR_BYTES = _QR_BITS // 8  # 11

# Base38 (§5.1.3.2).
BASE38_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-."
RADIX = len(BASE38_ALPHABET)
_BASE38_INDEX = {c: i for i, c in enumerate(BASE38_ALPHABET)}
# bytes per chunk -> characters per chunk (smallest n with 38**n >= 256**bytes)
_CHUNK_CHARS = {3: 5, 2: 4, 1: 2}
_CHARS_TO_BYTES = {chars: n for n, chars in _CHUNK_CHARS.items()}
_QR_CHARS = (_QR_BYTES // 3) * _CHUNK_CHARS[3] + _CHUNK_CHARS[_QR_BYTES % 3]  # 19

# Manual code (§5.1.4.1).
_MANUAL_SHORT_LEN = 11
_MANUAL_LONG_LEN = 21
_PASSCODE_LOW_BITS = 14
_PASSCODE_LOW_MASK = (1 << _PASSCODE_LOW_BITS) - 1

QR_FIELD = "qr_payload"
MANUAL_FIELD = "manual_code"

VENDOR_ID_MAX = 0xFFF4  # 0xFFF5..0xFFFF are reserved; 0xFFF1..0xFFF4 are the test vendors
PRODUCT_ID_MAX = 0xFFFF


class CommissioningFlow(IntEnum):
    """Custom flow field (§5.1.3.1): how the device must be put into commissioning mode."""

    STANDARD = 0  # commissionable on power-up
    USER_INTENT = 1  # needs a user action (e.g. button press) first
    CUSTOM = 2  # vendor-specific steps, described in the DCL


class Discovery(IntFlag):
    """Discovery capabilities bitmask (§5.1.3.1): how a commissioner can find the device.

    Bits as in the SDK's `RendezvousInformationFlag` (src/setup_payload/SetupPayload.h):
    NFC (bit 4) and Thread (bit 5) came with Matter 1.5; bits 6..7 are reserved. Bit 0
    (Soft-AP) is still defined there so old payloads decode, but the current specification
    marks it reserved (SHALL be 0), so work orders refuse `soft-ap` (messages/work_order.py).
    """

    SOFT_AP = 1 << 0
    BLE = 1 << 1
    ON_NETWORK = 1 << 2
    WIFI_PAF = 1 << 3  # Wi-Fi Public Action Frame, added in Matter 1.4
    NFC = 1 << 4  # NFC-based commissioning (Matter 1.5)
    THREAD = 1 << 5  # Thread commissioning (Matter 1.5)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Discovery:
        """Build a mask from names such as ["ble", "on-network"] (see `DISCOVERY_NAMES`)."""
        result = cls(0)
        for name in names:
            try:
                result |= DISCOVERY_NAMES[name]
            except KeyError:
                known = ", ".join(DISCOVERY_NAMES)
                raise invalid("discovery", f"unknown method {name!r}; known: {known}") from None
        return result

    @property
    def names(self) -> list[str]:
        """The names of the set bits, in bit order (inverse of `from_names`)."""
        return [name for name, bit in DISCOVERY_NAMES.items() if self & bit]


DISCOVERY_NAMES: dict[str, Discovery] = {
    "soft-ap": Discovery.SOFT_AP,
    "ble": Discovery.BLE,
    "on-network": Discovery.ON_NETWORK,
    "wifi-paf": Discovery.WIFI_PAF,
    "nfc": Discovery.NFC,
    "thread": Discovery.THREAD,
}
# A plain int: `~` on an IntFlag complements only within its members, hiding reserved bits.
_DISCOVERY_DEFINED_BITS = int(
    Discovery.SOFT_AP
    | Discovery.BLE
    | Discovery.ON_NETWORK
    | Discovery.WIFI_PAF
    | Discovery.NFC
    | Discovery.THREAD
)


def validate_vendor_id(v: int, field: str = "vendor_id") -> int:
    """Return `v` if it is an assignable vendor ID (1..0xFFF4, test vendors included)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(field, f"must be an integer, got {type(v).__name__}")
    if not 1 <= v <= VENDOR_ID_MAX:
        raise invalid(field, f"must be in 1..0x{VENDOR_ID_MAX:04X} (0 and 0xFFF5.. reserved)")
    return v


def validate_product_id(p: int, field: str = "product_id") -> int:
    """Return `p` if it is a valid product ID (1..0xFFFF; 0 is reserved)."""
    if not isinstance(p, int) or isinstance(p, bool):
        raise invalid(field, f"must be an integer, got {type(p).__name__}")
    if not 1 <= p <= PRODUCT_ID_MAX:
        raise invalid(field, f"must be in 1..0x{PRODUCT_ID_MAX:04X} (0 is reserved)")
    return p


def short_discriminator(discriminator: int) -> int:
    """The 4-bit short discriminator carried by the manual code: the top 4 of 12 bits."""
    return validate_discriminator(discriminator) >> 8


@dataclass(frozen=True)
class SetupPayload:
    """The fields of a QR onboarding payload; construction validates every field.

    VID and PID are checked only for width (any 16-bit value encodes, as in the SDK's own test
    vectors); use `validate_vendor_id` / `validate_product_id` for what a work order may use.
    """

    vendor_id: int
    product_id: int
    flow: CommissioningFlow
    discovery: Discovery
    discriminator: int
    passcode: int
    version: int = PAYLOAD_VERSION

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        for name, bits in (("vendor_id", 16), ("product_id", 16)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
                errors.append(FieldError(name, f"must be an unsigned {bits}-bit integer"))
        if self.version != PAYLOAD_VERSION:
            errors.append(FieldError("version", f"must be {PAYLOAD_VERSION}, got {self.version}"))
        try:
            object.__setattr__(self, "flow", CommissioningFlow(self.flow))
        except ValueError:
            errors.append(FieldError("flow", f"must be 0, 1 or 2 (3 is reserved), got {self.flow}"))
        disc = self.discovery
        if not isinstance(disc, int) or isinstance(disc, bool) or not 0 <= disc <= 0xFF:
            errors.append(FieldError("discovery", "must be an 8-bit mask"))
        elif disc & ~_DISCOVERY_DEFINED_BITS:
            errors.append(FieldError("discovery", "must only use bits 0..5 (6..7 are reserved)"))
        else:
            object.__setattr__(self, "discovery", Discovery(disc))
        for name, check in (
            ("discriminator", validate_discriminator),
            ("passcode", validate_passcode),
        ):
            try:
                check(getattr(self, name))
            except InvalidInput as exc:
                errors.extend(exc.errors)
        if errors:
            raise InvalidInput(errors)


@dataclass(frozen=True)
class ManualCode:
    """The fields a manual pairing code carries (it has no full discriminator and no flow)."""

    short_discriminator: int
    passcode: int
    vendor_id: int | None  # present only in the 21-digit form
    product_id: int | None
    flow_long: bool  # True: 21-digit form, i.e. the commissioning flow is not Standard


# --- QR payload ----------------------------------------------------------------------------


def _base38_encode(data: bytes) -> str:
    out: list[str] = []
    for start in range(0, len(data), 3):
        chunk = data[start : start + 3]
        value = int.from_bytes(chunk, "little")
        for _ in range(_CHUNK_CHARS[len(chunk)]):
            value, digit = divmod(value, RADIX)
            out.append(BASE38_ALPHABET[digit])
    return "".join(out)


def _base38_decode(text: str, field: str) -> bytes:
    out = bytearray()
    for start in range(0, len(text), _CHUNK_CHARS[3]):
        chunk = text[start : start + _CHUNK_CHARS[3]]
        n_bytes = _CHARS_TO_BYTES.get(len(chunk))
        if n_bytes is None:
            raise invalid(field, f"Base38 text ends in a chunk of {len(chunk)} characters")
        value = 0
        for char in reversed(chunk):  # least significant digit first
            digit = _BASE38_INDEX.get(char)
            if digit is None:
                raise invalid(field, f"{char!r} is not a Base38 character ({BASE38_ALPHABET})")
            value = value * RADIX + digit
        if value >> (8 * n_bytes):
            raise invalid(field, f"Base38 chunk {chunk!r} overflows {n_bytes} bytes")
        out += value.to_bytes(n_bytes, "little")
    return bytes(out)


def encode_qr(p: SetupPayload) -> str:
    """Encode `p` as the QR code text "MT:" + 19 Base38 characters (§5.1.3)."""
    values = {
        "version": p.version,
        "vendor_id": p.vendor_id,
        "product_id": p.product_id,
        "flow": int(p.flow),
        "discovery": int(p.discovery),
        "discriminator": p.discriminator,
        "passcode": p.passcode,
        "padding": 0,
    }
    packed = 0
    shift = 0
    for name, width in _QR_LAYOUT:
        packed |= values[name] << shift
        shift += width
    return QR_PREFIX + _base38_encode(packed.to_bytes(_QR_BYTES, "little"))


def decode_qr(text: str) -> SetupPayload:
    """Decode an "MT:" QR code text into its fields, rejecting anything the spec forbids."""
    if not isinstance(text, str):
        raise invalid(QR_FIELD, f"must be a string, got {type(text).__name__}")
    if not text.startswith(QR_PREFIX):
        raise invalid(QR_FIELD, f"must start with {QR_PREFIX!r}")
    body = text[len(QR_PREFIX) :]
    if "*" in body:
        raise invalid(QR_FIELD, "concatenated payloads ('*') are not supported")
    if len(body) != _QR_CHARS:
        raise invalid(
            QR_FIELD,
            f"must have {_QR_CHARS} Base38 characters after {QR_PREFIX!r} (optional TLV data "
            f"is not supported), got {len(body)}",
        )
    packed = int.from_bytes(_base38_decode(body, QR_FIELD), "little")
    fields: dict[str, int] = {}
    for name, width in _QR_LAYOUT:
        fields[name] = packed & ((1 << width) - 1)
        packed >>= width
    if fields.pop("padding"):
        raise invalid(QR_FIELD, "padding bits must be 0")
    try:
        return SetupPayload(
            vendor_id=fields["vendor_id"],
            product_id=fields["product_id"],
            # Raw ints: __post_init__ turns them into the enums or reports the reserved values.
            flow=cast(CommissioningFlow, fields["flow"]),
            discovery=cast(Discovery, fields["discovery"]),
            discriminator=fields["discriminator"],
            passcode=fields["passcode"],
            version=fields["version"],
        )
    except InvalidInput as exc:
        # Report against the QR text, keeping which embedded field broke which rule.
        raise InvalidInput(
            [FieldError(QR_FIELD, f"{e.field} {e.message}") for e in exc.errors]
        ) from None


# --- Manual pairing code -------------------------------------------------------------------


def encode_manual(p: SetupPayload) -> str:
    """Encode `p` as the 11-digit manual code, or 21 digits when the flow is not Standard."""
    long_form = p.flow != CommissioningFlow.STANDARD
    short = p.discriminator >> 8
    chunk1 = (int(long_form) << 2) | (short >> 2)
    chunk2 = ((short & 0b11) << _PASSCODE_LOW_BITS) | (p.passcode & _PASSCODE_LOW_MASK)
    chunk3 = p.passcode >> _PASSCODE_LOW_BITS
    digits = f"{chunk1}{chunk2:05d}{chunk3:04d}"
    if long_form:
        digits += f"{p.vendor_id:05d}{p.product_id:05d}"
    return digits + verhoeff.calc_check_digit(digits)


def decode_manual(text: str) -> ManualCode:
    """Decode a manual pairing code (dashes and spaces allowed) into its fields."""
    if not isinstance(text, str):
        raise invalid(MANUAL_FIELD, f"must be a string, got {type(text).__name__}")
    digits = text.replace("-", "").replace(" ", "")
    if len(digits) not in (_MANUAL_SHORT_LEN, _MANUAL_LONG_LEN):
        raise invalid(
            MANUAL_FIELD,
            f"must have {_MANUAL_SHORT_LEN} or {_MANUAL_LONG_LEN} digits, got {len(digits)}",
        )
    if not (digits.isascii() and digits.isdigit()):
        raise invalid(MANUAL_FIELD, "must contain only digits (dashes and spaces are ignored)")
    if verhoeff.checksum(digits) != 0:
        raise invalid(MANUAL_FIELD, "Verhoeff check digit does not match")
    first = int(digits[0])
    if first > 7:
        raise invalid(MANUAL_FIELD, "first digit must be 0..7 (8 and 9 are reserved)")
    flow_long = bool(first >> 2)
    expected_len = _MANUAL_LONG_LEN if flow_long else _MANUAL_SHORT_LEN
    if len(digits) != expected_len:
        raise invalid(
            MANUAL_FIELD,
            f"first digit {first} announces {expected_len} digits, got {len(digits)}",
        )
    chunk2 = int(digits[1:6])
    if chunk2 > 0xFFFF:
        raise invalid(MANUAL_FIELD, "digits 2-6 must be at most 65535 (16 bits)")
    passcode = (int(digits[6:10]) << _PASSCODE_LOW_BITS) | (chunk2 & _PASSCODE_LOW_MASK)
    try:
        validate_passcode(passcode)
    except InvalidInput as exc:
        raise invalid(MANUAL_FIELD, f"passcode {exc.errors[0].message}") from None
    vendor_id = product_id = None
    if flow_long:
        vendor_id, product_id = int(digits[10:15]), int(digits[15:20])
        for name, value in (("vendor ID", vendor_id), ("product ID", product_id)):
            if value > 0xFFFF:
                raise invalid(MANUAL_FIELD, f"{name} must be at most 65535, got {value}")
    return ManualCode(
        short_discriminator=((first & 0b11) << 2) | (chunk2 >> _PASSCODE_LOW_BITS),
        passcode=passcode,
        vendor_id=vendor_id,
        product_id=product_id,
        flow_long=flow_long,
    )
