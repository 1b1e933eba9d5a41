"""PBKDF2-HMAC-SHA256 (RFC 8018 §5.2), native: the SPAKE2+ verifier's cost (issue #26).

The SPAKE2+ verifier (spake2p.py) is PBKDF2-HMAC-SHA256 with 80 output bytes: three 32-byte
blocks, each `iterations` times two SHA-256 compressions, 60,000 compressions per device at
10,000 iterations and most of a device's CPU. `_pbkdf2.c` computes it at the SHA-256 limit:

- `sha-ni`: the CPU's SHA extensions, the three output blocks interleaved (one block's chain of
  SHA-NI rounds leaves the unit idle most of the time), HMAC pads absorbed once per call, each
  iteration one compression of a fixed-layout block held in registers;
- `portable`: the same in plain C, one block at a time, on a CPU without SHA-NI.

The choice is made once at import (cpuid) and named by IMPLEMENTATION, which `matterfab doctor`
and the bench print. There is no pure-Python fallback: the extension is built by `make install`
(setup.py), and without it this module refuses to import with a line saying so.

Passwords are limited to MAX_PASSWORD_LEN = 64 bytes, one SHA-256 block: HMAC uses a key of up
to one block as is, and hashes a longer one first, a path the Matter passcode (4 bytes, little
endian) never takes. A longer password is refused (InvalidInput) rather than handled by code no
verifier ever runs.
"""

from __future__ import annotations

from matterfab.errors import invalid

try:
    from matterfab.matter import _pbkdf2
except ImportError as exc:  # pragma: no cover - an install without the extension
    raise ImportError(
        "matterfab.matter._pbkdf2 (the native PBKDF2) is not built: run `make install` "
        f"(pip install -e . compiles it with gcc): {exc}"
    ) from exc

MAX_PASSWORD_LEN: int = _pbkdf2.MAX_PASSWORD_LEN
# "sha-ni" or "portable": what pbkdf2_hmac_sha256 runs on this CPU.
IMPLEMENTATION: str = _pbkdf2.IMPLEMENTATION
# Output blocks computed at once (3 with SHA-NI, 1 portable).
LANES: int = _pbkdf2.LANES
MAX_LENGTH = 1 << 20


def describe() -> str:
    """One line naming the implementation, e.g. for `matterfab doctor` and the bench."""
    if IMPLEMENTATION == "sha-ni":
        return f"native sha-ni ({LANES} blocks interleaved)"
    return "native portable C (this CPU has no SHA-NI)"


def pbkdf2_hmac_sha256(
    password: bytes, salt: bytes, iterations: int, length: int, *, portable: bool = False
) -> bytes:
    """PBKDF2-HMAC-SHA256(password, salt, iterations) truncated to `length` bytes.

    Equal to `hashlib.pbkdf2_hmac("sha256", password, salt, iterations, length)`; releases the
    GIL while it computes. `portable=True` forces the portable code (tests, bench).
    """
    if len(password) > MAX_PASSWORD_LEN:
        raise invalid(
            "password",
            f"must be at most {MAX_PASSWORD_LEN} bytes (one HMAC block; a Matter passcode is 4), "
            f"got {len(password)}",
        )
    if not 1 <= iterations <= 0xFFFFFFFF:
        raise invalid("iterations", f"must be in 1..{0xFFFFFFFF}, got {iterations}")
    if not 1 <= length <= MAX_LENGTH:
        raise invalid("length", f"must be in 1..{MAX_LENGTH} bytes, got {length}")
    return _pbkdf2.pbkdf2_hmac_sha256(password, salt, iterations, length, portable=portable)


def sha256(data: bytes, *, portable: bool = False) -> bytes:
    """SHA-256 of `data` through this module's compression function (a self-check)."""
    return _pbkdf2.sha256(data, portable=portable)


def compress_chain(count: int, *, portable: bool = False) -> bytes:
    """`count` SHA-256 compressions back to back (bulk hashing of count * 64 bytes in L1).

    The reference for the PBKDF2's speed: one device's verifier is 60,000 compressions at
    10,000 iterations, so it is at the SHA-256 limit when it takes no longer than this loop.
    Returns the final state so the work cannot be skipped.
    """
    return _pbkdf2.compress_chain(count, portable=portable)
