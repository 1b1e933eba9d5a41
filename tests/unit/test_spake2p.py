"""SPAKE2+ verifier derivation (matterfab.matter.spake2p)."""

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import InvalidInput
from matterfab.matter import spake2p

# The Matter SDK's default test parameters (vector checked in tests/conformance).
SALT = b"SPAKE2P Key Salt"
VECTOR = base64.b64decode(
    "uWFwqugDNGiEck/po7KHwwMwwqZgN10XuyBajPGuyzUEV/iree4lOrao5GuwnlQ65CJzbeUB49s31EH+NEkg0JVI"
    "5MGCQGMMT/SRPFNRODm3wH/MBiehuFc6FJ/NH6Rmzw=="
)


def test_known_answer():
    assert spake2p.compute_verifier(20202021, SALT, 1000) == VECTOR


def test_layout_w0_and_uncompressed_point_on_curve():
    v = spake2p.compute_verifier(20202021, bytes(range(32)), 2000)
    assert len(v) == spake2p.VERIFIER_LEN == 97
    w0 = int.from_bytes(v[:32], "big")
    assert 0 <= w0 < spake2p.P256_ORDER
    assert v[32] == 0x04
    # Parsing fails unless L is a valid point on P-256.
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), v[32:])


def test_independent_recomputation_of_w0():
    ws = hashlib.pbkdf2_hmac("sha256", (12349876).to_bytes(4, "little"), SALT, 1000, 80)
    w0 = int.from_bytes(ws[:40], "big") % spake2p.P256_ORDER
    assert spake2p.compute_verifier(12349876, SALT, 1000)[:32] == w0.to_bytes(32, "big")


def test_verify_verifier():
    assert spake2p.verify_verifier(20202021, SALT, 1000, VECTOR)
    assert not spake2p.verify_verifier(20202022, SALT, 1000, VECTOR)
    assert not spake2p.verify_verifier(20202021, SALT, 1001, VECTOR)
    assert not spake2p.verify_verifier(20202021, SALT, 1000, VECTOR[:-1])


@pytest.mark.parametrize(
    ("args", "field", "rule"),
    [
        ((12345678, SALT, 1000), "passcode", "trivial"),
        ((0, SALT, 1000), "passcode", "1..99999998"),
        ((20202021, bytes(15), 1000), "salt", "16..32 bytes"),
        ((20202021, bytes(33), 1000), "salt", "16..32 bytes"),
        ((20202021, SALT, 999), "iteration_count", "1000..100000"),
        ((20202021, SALT, 100001), "iteration_count", "1000..100000"),
    ],
)
def test_invalid_parameters_raise_typed_errors(args, field, rule):
    with pytest.raises(InvalidInput) as exc:
        spake2p.compute_verifier(*args)
    assert exc.value.field == field
    assert rule in str(exc.value)


def test_validate_iterations_bounds():
    assert spake2p.validate_iterations(1000) == 1000
    assert spake2p.validate_iterations(100000) == 100000
    with pytest.raises(InvalidInput):
        spake2p.validate_iterations(True)
