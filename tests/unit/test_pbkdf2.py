"""The native PBKDF2-HMAC-SHA256 (matterfab.matter.pbkdf2) against hashlib.pbkdf2_hmac (issue #26).

Every implementation this machine has is checked (pbkdf2.AVAILABLE): the one this CPU runs
(`sha-ni` here, with the three output blocks interleaved), `openssl` (cryptography's, the
fallback on a CPU without SHA-NI) and the extension's portable C path.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.matter import pbkdf2, spake2p

IMPLS = list(pbkdf2.AVAILABLE)

# RFC 7914 §11: PBKDF2-HMAC-SHA256 test vectors (P, S, c, dkLen, DK).
RFC7914 = [
    (
        b"passwd",
        b"salt",
        1,
        64,
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
    ),
    (
        b"Password",
        b"NaCl",
        80000,
        64,
        "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d",
    ),
]


def reference(password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, length)


def test_without_sha_ni_the_fallback_is_openssl_and_named() -> None:
    code = (
        "from matterfab.matter import pbkdf2, spake2p; "
        "print(pbkdf2.IMPLEMENTATION, ','.join(pbkdf2.AVAILABLE), pbkdf2.describe()); "
        "assert pbkdf2.LANES == 1; "
        "print(spake2p.compute_verifier(20202021, b'SPAKE2P Key Salt', 1000).hex())"
    )
    env = {**os.environ, pbkdf2.NO_SHA_NI_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "openssl openssl,portable openssl via cryptography (no SHA-NI)"
    assert out[1] == spake2p.compute_verifier(20202021, b"SPAKE2P Key Salt", 1000).hex()


def test_names_the_implementation_this_cpu_runs() -> None:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    if "sha_ni" in flags:
        assert (pbkdf2.IMPLEMENTATION, pbkdf2.LANES) == ("sha-ni", 3)
        assert pbkdf2.describe() == "native sha-ni (3 blocks interleaved)"
    else:
        assert (pbkdf2.IMPLEMENTATION, pbkdf2.LANES) == ("openssl", 1)
        assert "no SHA-NI" in pbkdf2.describe()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("password", "salt", "iterations", "length", "expected"), RFC7914)
def test_rfc7914_vectors(
    impl: pbkdf2.Implementation,
    password: bytes,
    salt: bytes,
    iterations: int,
    length: int,
    expected: str,
) -> None:
    got = pbkdf2.pbkdf2_hmac_sha256(password, salt, iterations, length, impl=impl)
    assert got.hex() == expected
    assert got == reference(password, salt, iterations, length)


@pytest.mark.parametrize("portable", [False, True], ids=["best", "portable"])
def test_sha256_compression_matches_hashlib(portable: bool) -> None:
    # Lengths around the padding boundaries (55/56 bytes: one or two final blocks).
    for n in (0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4097):
        data = random.Random(n).randbytes(n)
        assert pbkdf2.sha256(data, portable=portable) == hashlib.sha256(data).digest(), n


def test_compress_chain_is_bulk_hashing() -> None:
    # count compressions from the initial state over the module's fixed buffer: deterministic,
    # equal on both paths, and different for a different count.
    assert pbkdf2.compress_chain(200) == pbkdf2.compress_chain(200, portable=True)
    assert pbkdf2.compress_chain(200) != pbkdf2.compress_chain(201)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length", [1, 31, 32, 33, 63, 64, 65, 80, 95, 96, 97, 160, 200])
def test_every_output_length_and_lane_count(impl: pbkdf2.Implementation, length: int) -> None:
    # 1..3 blocks run as 1..3 interleaved lanes, 4..7 blocks as a group of 3 and the rest.
    password, salt = b"\x25\x41\x34\x01", bytes(range(32))
    got = pbkdf2.pbkdf2_hmac_sha256(password, salt, 7, length, impl=impl)
    assert got == reference(password, salt, 7, length)


@pytest.mark.parametrize("impl", IMPLS)
def test_passwords_and_salts_at_their_edges(impl: pbkdf2.Implementation) -> None:
    for password in (b"", b"\x00", bytes(63), b"\xff" * 64):
        for salt in (b"", b"s", bytes(16), b"\x80" * 55, bytes(56), bytes(64), bytes(200)):
            got = pbkdf2.pbkdf2_hmac_sha256(password, salt, 3, 80, impl=impl)
            assert got == reference(password, salt, 3, 80), (password, salt)


def test_10000_random_cases_equal_hashlib() -> None:
    """Passwords 0..64 bytes, salts 16..32, 1..100,000 iterations, 1..96 output bytes.

    Most cases take up to 500 iterations, one in a hundred up to 100,000, so the run stays
    within seconds (hashlib, the reference, is the slow side); the seed is fixed.
    """
    rng = random.Random(26)
    for case in range(10_000):
        password = rng.randbytes(rng.randint(0, 64))
        salt = rng.randbytes(rng.randint(16, 32))
        iterations = rng.randint(1, 100_000) if case % 100 == 0 else rng.randint(1, 500)
        length = rng.randint(1, 96)
        got = pbkdf2.pbkdf2_hmac_sha256(password, salt, iterations, length)
        assert got == reference(password, salt, iterations, length), (case, iterations)


@settings(max_examples=150, deadline=None)
@given(
    password=st.binary(min_size=0, max_size=64),
    salt=st.binary(min_size=16, max_size=32),
    iterations=st.integers(min_value=1, max_value=300),
    length=st.integers(min_value=1, max_value=96),
    impl=st.sampled_from(IMPLS),
)
def test_property_equal_to_hashlib(
    password: bytes, salt: bytes, iterations: int, length: int, impl: pbkdf2.Implementation
) -> None:
    got = pbkdf2.pbkdf2_hmac_sha256(password, salt, iterations, length, impl=impl)
    assert got == reference(password, salt, iterations, length)


@pytest.mark.parametrize(
    ("args", "field", "rule"),
    [
        ((bytes(65), b"salt", 1, 32), "password", "at most 64 bytes"),
        ((b"p", b"salt", 0, 32), "iterations", "1..4294967295"),
        ((b"p", b"salt", 1, 0), "length", "1..1048576"),
    ],
)
def test_refuses_what_the_passcode_path_never_needs(
    args: tuple[bytes, bytes, int, int], field: str, rule: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        pbkdf2.pbkdf2_hmac_sha256(*args)
    assert exc.value.field == field and rule in str(exc.value)


def test_the_limits_hold_for_every_implementation() -> None:
    for impl in IMPLS:
        with pytest.raises(InvalidInput, match="password: must be at most 64 bytes"):
            pbkdf2.pbkdf2_hmac_sha256(bytes(65), b"salt", 1, 32, impl=impl)
    with pytest.raises(InvalidInput, match="impl: must be one of"):
        pbkdf2.pbkdf2_hmac_sha256(b"p", b"salt", 1, 32, impl="md5")  # type: ignore[arg-type]


def test_the_extension_checks_the_password_too() -> None:
    from matterfab.matter import _pbkdf2

    with pytest.raises(ValueError, match="password: must be at most 64 bytes"):
        _pbkdf2.pbkdf2_hmac_sha256(bytes(65), b"salt", 1, 32)


def test_releases_the_gil() -> None:
    # While one thread derives, this one keeps running Python code: the largest pause between
    # two of its steps stays far below the derivation's time (holding the GIL, the pause would
    # be the whole derivation).
    done = threading.Event()
    spent: list[float] = []

    def derive() -> None:
        started = time.perf_counter()
        pbkdf2.pbkdf2_hmac_sha256(b"abcd", bytes(16), 1_000_000, 80)
        spent.append(time.perf_counter() - started)
        done.set()

    worker = threading.Thread(target=derive)
    worker.start()
    last, gap = time.perf_counter(), 0.0
    while not done.is_set():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    worker.join()
    assert gap < spent[0] / 2, (gap, spent[0])


def test_doctor_names_the_implementation_and_self_checks() -> None:
    from typer.testing import CliRunner

    from matterfab.cli.main import app

    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert f"pbkdf2: {pbkdf2.describe()} (implementation={pbkdf2.IMPLEMENTATION})" in result.output
    assert result.output.count("against hashlib: ok") == len(pbkdf2.AVAILABLE)
    assert "60,000 SHA-256 compressions back to back" in result.output


def test_the_image_builds_the_extension() -> None:
    # `pip install .` in deploy/Dockerfile compiles it: setup.py and a compiler must be there.
    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "deploy" / "Dockerfile").read_text()
    assert "COPY pyproject.toml requirements.lock README.md setup.py ./" in dockerfile
    assert "install -y --no-install-recommends gcc" in dockerfile
    setup = (root / "setup.py").read_text()
    assert "shared/matterfab/matter/_pbkdf2.c" in setup
    assert (root / "shared/matterfab/matter/_pbkdf2.c").is_file()
