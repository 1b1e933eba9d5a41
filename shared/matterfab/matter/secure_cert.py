"""The esp_secure_cert partition (TLV format): a device's DAC, PAI and DAC key, and a reader.

ESP-Matter reads attestation data from this partition when built with
`CONFIG_SEC_CERT_DAC_PROVIDER` (Espressif's pre-provisioning service and
`esp-matter-mfg-tool --dac-in-secure-cert` write it). Layout, as esp-secure-cert-tool 2.6.1
(`tlv_format_construct.py`) writes it and esp_secure_cert_mgr reads it:

    entry  = header (12) ‖ data (length) ‖ zero padding to a multiple of 16 ‖ CRC32 (4)
    header = magic u32 0xBA5EBA11 ‖ flags u8 ‖ reserved 00 00 00 ‖ type u8 ‖ subtype u8 ‖
             length u16                                               (all little-endian)
    CRC32  = zlib crc32 seeded with 0xFFFFFFFF over header ‖ data ‖ padding, little-endian

Entries follow each other with nothing between; the file ends after the last footer (the
tool writes only the used bytes of its 0x2000-byte buffer; flash erased to 0xFF ends the
list on the device, so a reader also stops at 0xFF fill).

Matter's three entries, in the tool's order: the DAC (type 1, DEV_CERT, DER), the PAI
(type 0, CA_CERT, DER), the DAC private key (type 2, PRIV_KEY, SEC1 `ECPrivateKey` DER with
its public key, flags 0 = plaintext), all subtype 0. The image holds the private key in the
clear, like the NVS factory partition: build it in memory and store it only where the NVS
image may go.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)

from matterfab.errors import FieldError, InvalidInput, invalid

__all__ = [
    "MAGIC",
    "MAX_SIZE",
    "SecureCert",
    "TlvEntry",
    "TlvType",
    "build_secure_cert",
    "decode_entries",
    "encode_entries",
    "read_secure_cert",
    "sec1_der",
]

MAGIC = 0xBA5EBA11
ALIGNMENT = 16  # data is zero-padded to this many bytes before the CRC
MAX_SIZE = 0x2000  # the tool refuses entries past 8 KiB, the partition size ESP-Matter uses
FLAGS_PLAINTEXT = 0x00  # PRIV_KEY flags: no bit set = key stored as is (not HMAC/DS/peripheral)
_ERASED_MAGIC = 0xFFFFFFFF  # erased flash: the end of the entries on a device
_HEADER = struct.Struct("<IB3sBBH")
_FOOTER = struct.Struct("<I")
_MAX_LENGTH = 0xFFFF  # length is u16


class TlvType(enum.IntEnum):
    """TLV types of esp_secure_cert (esp_secure_cert_tlv_config.h); Matter uses the first three."""

    CA_CERT = 0
    DEV_CERT = 1
    PRIV_KEY = 2
    DS_DATA = 3
    DS_CONTEXT = 4
    ECDSA_KEY_SALT = 5
    SEC_CFG = 6
    TEE_SEC_STORAGE_KEY = 7
    SIGNATURE_BLOCK = 8
    INTEGRITY = 9


@dataclass(frozen=True)
class TlvEntry:
    """One TLV entry: type, subtype, flags and its data (without padding)."""

    type: int
    subtype: int
    flags: int
    data: bytes


@dataclass(frozen=True)
class SecureCert:
    """A device's attestation data as read from its esp_secure_cert partition."""

    dac_cert: bytes  # DER
    pai_cert: bytes  # DER
    dac_key: bytes  # SEC1 ECPrivateKey DER, as stored
    dac_key_raw: bytes  # the 32-byte private scalar it holds


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def _padding(length: int) -> int:
    return -length % ALIGNMENT


def encode_entries(entries: list[TlvEntry]) -> bytes:
    """The partition image of `entries`, in the order given (no fill after the last one)."""
    out = bytearray()
    for i, e in enumerate(entries):
        if not 0 <= e.type <= 0xFF or not 0 <= e.subtype <= 0xFF or not 0 <= e.flags <= 0xFF:
            raise invalid(f"entries[{i}]", "type, subtype and flags must each fit in a byte")
        if len(e.data) > _MAX_LENGTH:
            raise invalid(f"entries[{i}].data", f"must be at most {_MAX_LENGTH} bytes (u16)")
        body = (
            _HEADER.pack(MAGIC, e.flags, b"\0\0\0", e.type, e.subtype, len(e.data))
            + e.data
            + b"\0" * _padding(len(e.data))
        )
        out += body + _FOOTER.pack(_crc(body))
    if len(out) > MAX_SIZE:
        raise invalid(
            "secure_cert", f"needs {len(out)} bytes, more than the {MAX_SIZE:#x} partition"
        )
    return bytes(out)


def sec1_der(private_key_raw: bytes) -> bytes:
    """The P-256 private scalar as SEC1 `ECPrivateKey` DER (with parameters and public key).

    The form the tool stores: cryptography's TraditionalOpenSSL DER, which mbedTLS's
    `mbedtls_pk_parse_key` reads on the device.
    """
    if len(private_key_raw) != 32:
        raise invalid("dac_key", "must be the raw 32-byte private scalar")
    scalar = int.from_bytes(private_key_raw, "big")
    try:
        key = ec.derive_private_key(scalar, ec.SECP256R1())
    except ValueError:
        raise invalid("dac_key", "is not a valid P-256 private scalar") from None
    return key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())


def build_secure_cert(dac_cert: bytes, pai_cert: bytes, dac_key: bytes) -> bytes:
    """A device's esp_secure_cert image: DAC, PAI, DAC key (raw scalar in, SEC1 DER stored).

    Byte-identical to `esp-matter-mfg-tool --dac-in-secure-cert` for the same certificates and
    key (tests/conformance/test_secure_cert.py). Deterministic, so a rebuilt image matches the
    write-once object already stored.
    """
    errors = [
        FieldError(name, "must not be empty")
        for name, value in (("dac_cert", dac_cert), ("pai_cert", pai_cert))
        if not value
    ]
    if errors:
        raise InvalidInput(errors)
    return encode_entries(
        [
            TlvEntry(TlvType.DEV_CERT, 0, 0, dac_cert),
            TlvEntry(TlvType.CA_CERT, 0, 0, pai_cert),
            TlvEntry(TlvType.PRIV_KEY, 0, FLAGS_PLAINTEXT, sec1_der(dac_key)),
        ]
    )


def build_certs_only(dac_cert: bytes, pai_cert: bytes) -> bytes:
    """An esp_secure_cert image with the DAC and PAI and no key entry (dac_storage device-key:
    the key was born in the chip and stays there)."""
    errors = [
        FieldError(name, "must not be empty")
        for name, value in (("dac_cert", dac_cert), ("pai_cert", pai_cert))
        if not value
    ]
    if errors:
        raise InvalidInput(errors)
    return encode_entries(
        [TlvEntry(TlvType.DEV_CERT, 0, 0, dac_cert), TlvEntry(TlvType.CA_CERT, 0, 0, pai_cert)]
    )


def decode_entries(image: bytes) -> list[TlvEntry]:
    """Every entry of an image, checking magic, reserved bytes, bounds and each CRC.

    Stops at the end of the bytes or at erased flash (0xFF fill); raises InvalidInput (field
    `secure_cert`) naming the offset of the first broken entry.
    """
    entries: list[TlvEntry] = []
    offset = 0
    while offset < len(image):
        where = f"entry at offset {offset:#x}"
        if len(image) - offset < _HEADER.size:
            if image[offset:] == b"\xff" * (len(image) - offset):
                break
            raise invalid("secure_cert", f"{where}: truncated header")
        magic, flags, reserved, kind, subtype, length = _HEADER.unpack_from(image, offset)
        if magic == _ERASED_MAGIC:
            if image[offset:] != b"\xff" * (len(image) - offset):
                raise invalid("secure_cert", f"{where}: data after the 0xFF fill")
            break
        if magic != MAGIC:
            raise invalid("secure_cert", f"{where}: magic {magic:#010x}, expected {MAGIC:#010x}")
        if reserved != b"\0\0\0":
            raise invalid("secure_cert", f"{where}: reserved header bytes are not zero")
        end = offset + _HEADER.size + length + _padding(length)
        if end + _FOOTER.size > len(image):
            raise invalid("secure_cert", f"{where}: length {length} runs past the image")
        (crc,) = _FOOTER.unpack_from(image, end)
        if _crc(image[offset:end]) != crc:
            raise invalid("secure_cert", f"{where}: CRC32 mismatch")
        data = image[offset + _HEADER.size : offset + _HEADER.size + length]
        if image[offset + _HEADER.size + length : end] != b"\0" * _padding(length):
            raise invalid("secure_cert", f"{where}: padding is not zero")
        entries.append(TlvEntry(kind, subtype, flags, data))
        offset = end + _FOOTER.size
    return entries


def read_secure_cert(image: bytes) -> SecureCert:
    """The DAC, PAI and DAC key of a Matter esp_secure_cert image (entries as the tool writes).

    Raises InvalidInput when an entry is missing, repeated, or the key is not a plaintext
    P-256 key.
    """
    found: dict[int, TlvEntry] = {}
    for e in decode_entries(image):
        if e.subtype != 0 or e.type not in (TlvType.DEV_CERT, TlvType.CA_CERT, TlvType.PRIV_KEY):
            continue  # other entries (commissionable data, user data) are not ours to read
        if e.type in found:
            raise invalid("secure_cert", f"TLV type {TlvType(e.type).name} appears twice")
        found[e.type] = e
    missing = [
        t.name for t in (TlvType.DEV_CERT, TlvType.CA_CERT, TlvType.PRIV_KEY) if t not in found
    ]
    if missing:
        raise invalid("secure_cert", f"lacks the {', '.join(missing)} entry")
    key_entry = found[TlvType.PRIV_KEY]
    if key_entry.flags != FLAGS_PLAINTEXT:
        raise invalid("secure_cert", f"private key flags {key_entry.flags:#04x}: not plaintext")
    try:
        key = load_der_private_key(key_entry.data, password=None)
    except (ValueError, TypeError):
        raise invalid("secure_cert", "private key entry is not a DER private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise invalid("secure_cert", "private key is not a P-256 key")
    return SecureCert(
        dac_cert=found[TlvType.DEV_CERT].data,
        pai_cert=found[TlvType.CA_CERT].data,
        dac_key=key_entry.data,
        dac_key_raw=key.private_numbers().private_value.to_bytes(32, "big"),
    )
