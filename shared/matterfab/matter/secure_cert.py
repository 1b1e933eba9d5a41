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

Options (the work order's `secure_cert`), in the tool's entry order:
- ECDSA peripheral (`-ds --efuse-key-id N`): a SEC_CFG (type 6) entry first, 40 bytes
  `[N + 4] ‖ 39 zero bytes` (the eFuse block number, `esp_secure_cert_tlv_sec_cfg_t
  .priv_key_efuse_id`), and the PRIV_KEY entry with flags 0x08 and **no data**: in this mode
  esp_secure_cert_mgr's `esp_secure_cert_get_priv_key_type` reads only the entry's flags and
  `esp_secure_cert_get_priv_key_efuse_id` the SEC_CFG block, and ESP-Matter's
  `ESP32SecureCertDACProvider::SignWithDeviceAttestationKey` signs with the eFuse key through
  those two calls; nothing reads the key bytes. The tool keeps the whole SEC1 key there, which
  defeats a key that lives only in a read-protected eFuse block (reference §4 bug 5).
- Commissionable data (`--commissionable-data-in-secure-cert`): MATTER (type 201) subtypes
  0 discriminator u16 LE, 1 verifier (97 bytes, absent with a dynamic passcode), 2 salt,
  3 iteration count u32 LE; rotating device ID (`--rd-id-uid-in-secure-cert`): 201/4, the 16..32
  raw bytes. These are what ESP-Matter's `ESP32SecureCertDataProvider` reads (subtypes 0..4,
  its `MatterTLVSubType`). The tool also appends 201/128 and 201/129, 32 random bytes each;
  no reader in esp_secure_cert_mgr or ESP-Matter asks for them, so they are left out and the
  image stays deterministic.
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
    "Commissionable",
    "MatterSubtype",
    "SecureCert",
    "TlvEntry",
    "TlvType",
    "build_secure_cert",
    "decode_entries",
    "encode_entries",
    "matter_entries",
    "read_secure_cert",
    "sec1_der",
]

MAGIC = 0xBA5EBA11
ALIGNMENT = 16  # data is zero-padded to this many bytes before the CRC
MAX_SIZE = 0x2000  # the tool refuses entries past 8 KiB, the partition size ESP-Matter uses
FLAGS_PLAINTEXT = 0x00  # PRIV_KEY flags: no bit set = key stored as is (not HMAC/DS/peripheral)
FLAGS_ECDSA_PERIPHERAL = 0x08  # esp_secure_cert_tlv_private.h: key in an eFuse block
SEC_CFG_SIZE = 40  # esp_secure_cert_tlv_sec_cfg_t: priv_key_efuse_id u8 + 39 reserved
EFUSE_BLOCK_KEY0 = 4  # eFuse block number of BLOCK_KEY0; BLOCK_KEY<n> is block n + 4
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
    MATTER = 201  # ESP_SECURE_CERT_MATTER_TLV_1


class MatterSubtype(enum.IntEnum):
    """Subtypes of the MATTER entry (ESP-Matter's ESP32SecureCertDataProvider MatterTLVSubType)."""

    DISCRIMINATOR = 0
    VERIFIER = 1
    SALT = 2
    ITERATION_COUNT = 3
    RD_ID_UID = 4


@dataclass(frozen=True)
class Commissionable:
    """Commissionable data for TLV 201/0..3 (verifier None: dynamic passcode)."""

    discriminator: int
    verifier: bytes | None
    salt: bytes
    iteration_count: int


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
    dac_key: bytes  # SEC1 ECPrivateKey DER, as stored (empty: ECDSA peripheral)
    dac_key_raw: bytes | None  # the 32-byte private scalar it holds (None: in an eFuse block)
    efuse_block: int | None = None  # SEC_CFG's eFuse block (ECDSA peripheral)
    matter: tuple[TlvEntry, ...] = ()  # the MATTER (201) entries, in image order


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


def build_secure_cert(
    dac_cert: bytes,
    pai_cert: bytes,
    dac_key: bytes,
    *,
    commissionable: Commissionable | None = None,
    rd_id_uid: bytes | None = None,
    efuse_key_id: int | None = None,
) -> bytes:
    """A device's esp_secure_cert image: DAC, PAI, DAC key (raw scalar in, SEC1 DER stored).

    Byte-identical to `esp-matter-mfg-tool --dac-in-secure-cert` for the same certificates and
    key (tests/conformance/test_mfgtool_secure_cert.py). Deterministic, so a rebuilt image
    matches the write-once object already stored. With `efuse_key_id` (ECDSA peripheral) the
    key is left out (module docstring); `dac_key` is still checked, as the station burns it.
    """
    errors = [
        FieldError(name, "must not be empty")
        for name, value in (("dac_cert", dac_cert), ("pai_cert", pai_cert))
        if not value
    ]
    if errors:
        raise InvalidInput(errors)
    key_der = sec1_der(dac_key)
    entries: list[TlvEntry] = []
    if efuse_key_id is not None:
        if not 0 <= efuse_key_id <= 5:
            raise invalid("secure_cert.efuse_key_id", "must be in 0..5 (BLOCK_KEY0..5)")
        sec_cfg = bytes([efuse_key_id + EFUSE_BLOCK_KEY0]) + bytes(SEC_CFG_SIZE - 1)
        entries.append(TlvEntry(TlvType.SEC_CFG, 0, 0, sec_cfg))
    entries += [
        TlvEntry(TlvType.DEV_CERT, 0, 0, dac_cert),
        TlvEntry(TlvType.CA_CERT, 0, 0, pai_cert),
        TlvEntry(TlvType.PRIV_KEY, 0, FLAGS_PLAINTEXT, key_der)
        if efuse_key_id is None
        else TlvEntry(TlvType.PRIV_KEY, 0, FLAGS_ECDSA_PERIPHERAL, b""),
    ]
    entries += matter_entries(commissionable, rd_id_uid)
    return encode_entries(entries)


def matter_entries(
    commissionable: Commissionable | None, rd_id_uid: bytes | None
) -> list[TlvEntry]:
    """The MATTER (201) entries for commissionable data and the rotating device ID unique ID."""
    out: list[TlvEntry] = []
    m = TlvType.MATTER
    if commissionable is not None:
        c = commissionable
        out.append(TlvEntry(m, MatterSubtype.DISCRIMINATOR, 0, struct.pack("<H", c.discriminator)))
        if c.verifier is not None:
            out.append(TlvEntry(m, MatterSubtype.VERIFIER, 0, c.verifier))
        out.append(TlvEntry(m, MatterSubtype.SALT, 0, c.salt))
        out.append(
            TlvEntry(m, MatterSubtype.ITERATION_COUNT, 0, struct.pack("<I", c.iteration_count))
        )
    if rd_id_uid is not None:
        out.append(TlvEntry(m, MatterSubtype.RD_ID_UID, 0, rd_id_uid))
    return out


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
    matter: list[TlvEntry] = []
    for e in decode_entries(image):
        if e.type == TlvType.MATTER:
            matter.append(e)
            continue
        if e.subtype != 0 or e.type not in (
            TlvType.DEV_CERT,
            TlvType.CA_CERT,
            TlvType.PRIV_KEY,
            TlvType.SEC_CFG,
        ):
            continue  # other entries (user data) are not ours to read
        if e.type in found:
            raise invalid("secure_cert", f"TLV type {TlvType(e.type).name} appears twice")
        found[e.type] = e
    missing = [
        t.name for t in (TlvType.DEV_CERT, TlvType.CA_CERT, TlvType.PRIV_KEY) if t not in found
    ]
    if missing:
        raise invalid("secure_cert", f"lacks the {', '.join(missing)} entry")
    key_entry = found[TlvType.PRIV_KEY]
    if key_entry.flags == FLAGS_ECDSA_PERIPHERAL:
        cfg = found.get(TlvType.SEC_CFG)
        if cfg is None or len(cfg.data) != SEC_CFG_SIZE:
            raise invalid("secure_cert", "ECDSA peripheral key without a 40-byte SEC_CFG entry")
        return SecureCert(
            dac_cert=found[TlvType.DEV_CERT].data,
            pai_cert=found[TlvType.CA_CERT].data,
            dac_key=key_entry.data,
            dac_key_raw=None,
            efuse_block=cfg.data[0],
            matter=tuple(matter),
        )
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
        matter=tuple(matter),
    )
