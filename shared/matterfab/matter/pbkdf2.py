"""PBKDF2-HMAC-SHA256 (RFC 8018 §5.2), native: the SPAKE2+ verifier's cost (issue #26).

The SPAKE2+ verifier (spake2p.py) is PBKDF2-HMAC-SHA256 with 80 output bytes: three 32-byte
blocks, each `iterations` times two SHA-256 compressions, 60,000 compressions per device at
10,000 iterations and most of a device's CPU. `_pbkdf2.c` computes it at the SHA-256 limit:

- `sha-ni`: the CPU's SHA extensions, the three output blocks interleaved (one block's chain of
  SHA-NI rounds leaves the unit idle most of the time), HMAC pads absorbed once per call, each
  iteration one compression of a fixed-layout block held in registers.

On a CPU without SHA-NI the fallback is `openssl`: `cryptography`'s PBKDF2, whose OpenSSL has
assembly SHA-256 (AVX2 and the like) that was measured here, with OpenSSL's SHA-NI masked off
(OPENSSL_ia32cap), about 1.3-1.5x faster than the extension's `portable` C path. That path
computes the same thing in plain C, one block at a time; it is kept as the extension's reference
without SHA-NI (tests, `matterfab doctor`, the bench), and runs only when asked for.

The choice is made once at import (cpuid; MATTERFAB_PBKDF2_NO_SHA_NI=1 makes it as on a CPU
without SHA-NI, to test or compare the fallback) and named by IMPLEMENTATION, which `make install`,
`matterfab doctor` and the bench print. There is no pure-Python fallback: the extension is built
by `make install` (setup.py), and without it this module refuses to import with a line saying so.

Passwords are limited to MAX_PASSWORD_LEN = 64 bytes, one SHA-256 block: HMAC uses a key of up
to one block as is, and hashes a longer one first, a path the Matter passcode (4 bytes, little
endian) never takes. A longer password is refused (InvalidInput) rather than handled by code no
verifier ever runs.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from matterfab.config import Pbkdf2Settings
from matterfab.errors import invalid

try:
    from matterfab.matter import _pbkdf2
except ImportError as exc:  # pragma: no cover - an install without the extension
    raise ImportError(
        "matterfab.matter._pbkdf2 (the native PBKDF2) is not built: run `make install` "
        f"(pip install -e . compiles it with gcc): {exc}"
    ) from exc

Implementation = Literal["sha-ni", "openssl", "portable"]
MAX_PASSWORD_LEN: int = _pbkdf2.MAX_PASSWORD_LEN
NO_SHA_NI_ENV = "MATTERFAB_PBKDF2_NO_SHA_NI"
_SHA_NI = _pbkdf2.IMPLEMENTATION == "sha-ni" and not Pbkdf2Settings().no_sha_ni
# What pbkdf2_hmac_sha256 runs on this CPU: "sha-ni", or "openssl" on a CPU without SHA-NI.
IMPLEMENTATION: Implementation = "sha-ni" if _SHA_NI else "openssl"
# Every implementation this machine can run (tests and the doctor check each against hashlib).
AVAILABLE: tuple[Implementation, ...] = (
    ("sha-ni", "openssl", "portable") if IMPLEMENTATION == "sha-ni" else ("openssl", "portable")
)
# Output blocks computed at once (3 with SHA-NI, else 1).
LANES: int = _pbkdf2.LANES if _SHA_NI else 1
MAX_LENGTH = 1 << 20


def describe(impl: Implementation | None = None) -> str:
    """One line naming an implementation (default: this CPU's), for the doctor and the bench."""
    impl = impl or IMPLEMENTATION
    if impl == "sha-ni":
        return f"native sha-ni ({LANES} blocks interleaved)"
    if impl == "openssl":
        return "openssl via cryptography (no SHA-NI)"
    return "native portable C (reference, not used)"


def pbkdf2_hmac_sha256(
    password: bytes,
    salt: bytes,
    iterations: int,
    length: int,
    *,
    impl: Implementation | None = None,
) -> bytes:
    """PBKDF2-HMAC-SHA256(password, salt, iterations) truncated to `length` bytes.

    Equal to `hashlib.pbkdf2_hmac("sha256", password, salt, iterations, length)`; releases the
    GIL while it computes. `impl` forces one of AVAILABLE (tests, bench); default IMPLEMENTATION.
    """
    impl = impl or IMPLEMENTATION
    if impl not in AVAILABLE:
        raise invalid("impl", f"must be one of {', '.join(AVAILABLE)} on this CPU, got {impl}")
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
    if impl == "openssl":
        return PBKDF2HMAC(hashes.SHA256(), length, salt, iterations).derive(password)
    portable = impl == "portable"
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
