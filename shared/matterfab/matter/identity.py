"""Per-device onboarding identity: passcode, discriminator, SPAKE2+ salt, rotating-ID unique ID.

Rules from the Matter Core Specification:
- Setup passcode (§5.1.7.1): 27 bits, 0x0000001..0x5F5E0FE (1..99999998), and none of the
  trivial values 00000000, 11111111, ..., 99999999, 12345678, 87654321. Generated from a CSPRNG.
- Discriminator (§5.1.1.5): 12 bits, 0..4095. Devices of one product are spread sequentially so
  that two neighbours on the line (or on a shelf, commissioned together) never share one.
- SPAKE2+ PBKDF salt (§3.9, §5.1.2): 16..32 random bytes.
- Rotating device ID unique ID (§5.4.2.4.5): at least 128 random bits, unique per device.

Every function is pure apart from drawing from `secrets`; invalid input raises
`matterfab.errors.InvalidInput` naming the field and the rule.
"""

from __future__ import annotations

import secrets

from matterfab.errors import invalid

PASSCODE_MIN = 1
PASSCODE_MAX = 99999998
# §5.1.7.1: values a person could guess; 0 is listed too although the range already excludes it.
INVALID_PASSCODES: frozenset[int] = frozenset(
    [11111111 * d for d in range(10)] + [12345678, 87654321]
)
_INVALID_PASSCODES_TEXT = "00000000, 11111111, ..., 99999999, 12345678, 87654321"

DISCRIMINATOR_MAX = 4095
_DISCRIMINATOR_SPACE = DISCRIMINATOR_MAX + 1

SALT_MIN_LEN = 16
SALT_MAX_LEN = 32

RD_ID_UID_MIN_LEN = 16  # spec: at least 128 bits
# Our own bound: the factory data providers read the unique ID into a fixed buffer
# (ESP-Matter: CHIP_DEVICE_CONFIG_ROTATING_DEVICE_ID_UNIQUE_ID_LENGTH, 16 unless reconfigured).
RD_ID_UID_MAX_LEN = 32


def _require_int(value: object, field: str) -> int:
    # bool is an int subclass; True as a passcode or discriminator is a caller bug, not a value.
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(field, f"must be an integer, got {type(value).__name__}")
    return value


def _require_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise invalid(field, f"must be bytes, got {type(value).__name__}")
    return bytes(value)


def validate_passcode(passcode: int, field: str = "passcode") -> int:
    """Return `passcode` if it is a valid Matter setup passcode (§5.1.7.1), else raise."""
    passcode = _require_int(passcode, field)
    if not PASSCODE_MIN <= passcode <= PASSCODE_MAX:
        raise invalid(field, f"must be in {PASSCODE_MIN}..{PASSCODE_MAX}, got {passcode}")
    if passcode in INVALID_PASSCODES:
        raise invalid(
            field, f"must not be one of the trivial passcodes ({_INVALID_PASSCODES_TEXT})"
        )
    return passcode


def generate_passcode() -> int:
    """Draw a uniformly random valid setup passcode from the OS CSPRNG."""
    while True:
        # Rejection sampling keeps the distribution uniform over the valid set.
        candidate = PASSCODE_MIN + secrets.randbelow(PASSCODE_MAX - PASSCODE_MIN + 1)
        if candidate not in INVALID_PASSCODES:
            return candidate


def validate_discriminator(discriminator: int, field: str = "discriminator") -> int:
    """Return `discriminator` if it fits the 12-bit field (0..4095), else raise."""
    discriminator = _require_int(discriminator, field)
    if not 0 <= discriminator <= DISCRIMINATOR_MAX:
        raise invalid(field, f"must be in 0..{DISCRIMINATOR_MAX} (12 bits), got {discriminator}")
    return discriminator


def discriminator_at(base: int, offset: int) -> int:
    """The discriminator of the `offset`-th device of a product: (base + offset) mod 4096.

    Sequential spreading gives 4096 consecutive devices distinct discriminators, so devices
    built (and often commissioned) next to each other never collide.
    """
    validate_discriminator(base, "discriminator_base")
    offset = _require_int(offset, "offset")
    if offset < 0:
        raise invalid("offset", f"must be >= 0, got {offset}")
    return (base + offset) % _DISCRIMINATOR_SPACE


def generate_salt(length: int = SALT_MAX_LEN) -> bytes:
    """Draw a random SPAKE2+ PBKDF salt of `length` bytes (16..32)."""
    length = _require_int(length, "salt_length")
    if not SALT_MIN_LEN <= length <= SALT_MAX_LEN:
        raise invalid("salt_length", f"must be in {SALT_MIN_LEN}..{SALT_MAX_LEN}, got {length}")
    return secrets.token_bytes(length)


def validate_salt(salt: bytes, field: str = "salt") -> bytes:
    """Return `salt` as bytes if its length is 16..32 bytes (§3.9 PBKDF parameters), else raise."""
    salt = _require_bytes(salt, field)
    if not SALT_MIN_LEN <= len(salt) <= SALT_MAX_LEN:
        raise invalid(
            field, f"must be {SALT_MIN_LEN}..{SALT_MAX_LEN} bytes long, got {len(salt)} bytes"
        )
    return salt


def generate_rd_id_uid(length: int = RD_ID_UID_MIN_LEN) -> bytes:
    """Draw a random rotating-device-ID unique ID of `length` bytes (16..32)."""
    length = _require_int(length, "rd_id_uid_length")
    if not RD_ID_UID_MIN_LEN <= length <= RD_ID_UID_MAX_LEN:
        raise invalid(
            "rd_id_uid_length",
            f"must be in {RD_ID_UID_MIN_LEN}..{RD_ID_UID_MAX_LEN}, got {length}",
        )
    return secrets.token_bytes(length)


def validate_rd_id_uid(uid: bytes, field: str = "rd_id_uid") -> bytes:
    """Return `uid` as bytes if it is 16..32 bytes long (at least 128 bits, §5.4.2.4.5)."""
    uid = _require_bytes(uid, field)
    if not RD_ID_UID_MIN_LEN <= len(uid) <= RD_ID_UID_MAX_LEN:
        raise invalid(
            field,
            f"must be {RD_ID_UID_MIN_LEN}..{RD_ID_UID_MAX_LEN} bytes long (at least 128 bits), "
            f"got {len(uid)} bytes",
        )
    return uid
