"""SPAKE2+ verifier for the setup passcode (Matter Core Specification §3.10, §5.1.2).

The device never stores its passcode, only the verifier (w0, L) derived from it:

    ws = PBKDF2-HMAC-SHA256(password = passcode as 4-byte little-endian,
                            salt = 16..32 bytes, iterations = 1000..100000, length = 80)
    w0 = int(ws[:40]) mod n,  w1 = int(ws[40:]) mod n        (n: order of P-256, big-endian ints)
    L  = w1 * G                                              (uncompressed SEC1 point, 65 bytes)
    verifier = w0 (32 bytes, big-endian) || L                (97 bytes)

This is the `verifier` that esp-matter-mfg-tool writes (base64) into the factory partition.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from matterfab.errors import invalid
from matterfab.matter.identity import validate_passcode, validate_salt
from matterfab.matter.pbkdf2 import pbkdf2_hmac_sha256

ITERATIONS_MIN = 1000
ITERATIONS_MAX = 100000

# Order of the P-256 base point (SEC 2, secp256r1 "n").
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_WS_HALF = 40  # each of w0s, w1s is 40 bytes: 64 extra bits make the mod-n reduction unbiased
W0_LEN = 32
L_LEN = 65
VERIFIER_LEN = W0_LEN + L_LEN


def validate_iterations(n: int, field: str = "iteration_count") -> int:
    """Return `n` if it is a permitted PBKDF2 iteration count (1000..100000), else raise."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise invalid(field, f"must be an integer, got {type(n).__name__}")
    if not ITERATIONS_MIN <= n <= ITERATIONS_MAX:
        raise invalid(field, f"must be in {ITERATIONS_MIN}..{ITERATIONS_MAX}, got {n}")
    return n


def compute_verifier(passcode: int, salt: bytes, iterations: int) -> bytes:
    """Return the 97-byte SPAKE2+ verifier w0 || L for `passcode` (see module docstring)."""
    validate_passcode(passcode)
    salt = validate_salt(salt)
    validate_iterations(iterations)
    # PBKDF2 is most of a device's CPU cost: the native one (pbkdf2.py: SHA-NI, the three
    # output blocks interleaved) is at the SHA-256 limit and releases the GIL.
    ws = pbkdf2_hmac_sha256(passcode.to_bytes(4, "little"), salt, iterations, 2 * _WS_HALF)
    w0 = int.from_bytes(ws[:_WS_HALF], "big") % P256_ORDER
    w1 = int.from_bytes(ws[_WS_HALF:], "big") % P256_ORDER
    # w1 == 0 has probability ~2**-256; cryptography then raises ValueError, which is right.
    point = ec.derive_private_key(w1, ec.SECP256R1()).public_key()
    l_bytes = point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return w0.to_bytes(W0_LEN, "big") + l_bytes


def verify_verifier(passcode: int, salt: bytes, iterations: int, verifier: bytes) -> bool:
    """True if `verifier` is the verifier of `passcode` under `salt` and `iterations`."""
    if len(verifier) != VERIFIER_LEN:
        return False
    return hmac.compare_digest(compute_verifier(passcode, salt, iterations), bytes(verifier))
