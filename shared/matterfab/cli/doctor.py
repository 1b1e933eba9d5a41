"""`matterfab doctor`: what this installation runs, and a self-check of its native code.

Prints matterfab's version, the Python and OpenSSL versions, and which PBKDF2 implementation
derives the SPAKE2+ verifiers (`sha-ni` with three blocks interleaved, or `openssl` through
`cryptography` on a CPU without SHA-NI), checks every implementation this machine has against
hashlib on an RFC 7914 vector, and times one verifier at 10,000 iterations. Exits 1 when a
self-check fails.
"""

from __future__ import annotations

import hashlib
import platform
import ssl
import time
from collections.abc import Callable
from importlib import metadata

import typer

# RFC 7914 §11, second PBKDF2-HMAC-SHA256 vector, at fewer iterations (hashlib checks it).
_CHECK = (b"Password", b"NaCl", 1000, 64)


def report() -> tuple[list[str], bool]:
    """The doctor's lines, and whether every check passed."""
    import cryptography
    from cryptography.hazmat.backends.openssl import backend

    from matterfab.matter import pbkdf2

    lines = [
        f"matterfab {metadata.version('matterfab')}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"openssl: cryptography {cryptography.__version__} with {backend.openssl_version_text()}; "
        f"hashlib with {ssl.OPENSSL_VERSION}",
        f"pbkdf2: {pbkdf2.describe()} (implementation={pbkdf2.IMPLEMENTATION})",
    ]
    ok = True
    for impl in pbkdf2.AVAILABLE:
        same = pbkdf2.pbkdf2_hmac_sha256(*_CHECK, impl=impl) == hashlib.pbkdf2_hmac(
            "sha256", *_CHECK
        )
        ok &= same
        lines.append(f"pbkdf2 self-check ({impl}) against hashlib: {'ok' if same else 'FAILED'}")
    password, salt = (20202021).to_bytes(4, "little"), bytes(32)
    verifier_ms = _best_ms(lambda: pbkdf2.pbkdf2_hmac_sha256(password, salt, 10_000, 80))
    chain_ms = _best_ms(lambda: pbkdf2.compress_chain(60_000))
    lines.append(
        f"pbkdf2 one verifier (80 bytes, 10,000 iterations): {verifier_ms:.2f} ms; "
        f"60,000 SHA-256 compressions back to back: {chain_ms:.2f} ms"
    )
    return lines, ok


def _best_ms(work: Callable[[], object], runs: int = 5) -> float:
    """The fastest of a few runs, in ms (a shared host's neighbours stretch single runs)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return 1000 * best


def doctor() -> None:
    """Show versions and the PBKDF2 implementation, and self-check the native code."""
    lines, ok = report()
    for line in lines:
        typer.echo(line)
    if not ok:
        raise typer.Exit(1)
