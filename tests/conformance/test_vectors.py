"""Known-answer vectors from the Matter SDK (shared/vectors/onboarding.json).

Each vector family is checked in a loop inside one test, and each test first asserts that it
saw vectors, so an empty or renamed section fails instead of passing vacuously.
"""

import base64

import pytest

from matterfab.errors import InvalidInput
from matterfab.matter import identity
from matterfab.matter.payload import (
    ManualCode,
    SetupPayload,
    decode_manual,
    decode_qr,
    encode_manual,
    encode_qr,
)
from matterfab.matter.rotating_id import rotating_device_id
from matterfab.matter.spake2p import compute_verifier, verify_verifier


def _payload(v: dict) -> SetupPayload:
    return SetupPayload(
        vendor_id=v["vid"],
        product_id=v["pid"],
        flow=v["flow"],
        discovery=v["discovery"],
        discriminator=v["discriminator"],
        passcode=v["passcode"],
    )


def test_qr_vectors(onboarding_vectors):
    vectors = onboarding_vectors["setup_payload"]
    assert len(vectors) >= 9
    for v in vectors:
        expected = _payload(v)
        assert encode_qr(expected) == v["qr"], v
        decoded = decode_qr(v["qr"])
        assert decoded == expected, v
        assert (decoded.vendor_id, decoded.product_id, decoded.flow, decoded.discovery) == (
            v["vid"],
            v["pid"],
            v["flow"],
            v["discovery"],
        )
        assert (decoded.discriminator, decoded.passcode, decoded.version) == (
            v["discriminator"],
            v["passcode"],
            0,
        )


def test_manual_code_vectors(onboarding_vectors):
    vectors = onboarding_vectors["setup_payload"]
    assert vectors
    for v in vectors:
        assert encode_manual(_payload(v)) == v["manual"], v
        long_form = v["flow"] != 0
        assert decode_manual(v["manual"]) == ManualCode(
            short_discriminator=v["discriminator"] >> 8,
            passcode=v["passcode"],
            vendor_id=v["vid"] if long_form else None,
            product_id=v["pid"] if long_form else None,
            flow_long=long_form,
        ), v


def test_spake2p_verifier_vectors(onboarding_vectors):
    vectors = onboarding_vectors["spake2p_verifier"]
    assert vectors
    for v in vectors:
        salt = base64.b64decode(v["salt_b64"])
        expected = base64.b64decode(v["verifier_b64"])
        assert compute_verifier(v["passcode"], salt, v["iterations"]) == expected, v
        assert verify_verifier(v["passcode"], salt, v["iterations"], expected)


def test_rotating_device_id_vectors(onboarding_vectors):
    vectors = onboarding_vectors["rotating_device_id"]
    assert len(vectors) >= 2
    for v in vectors:
        got = rotating_device_id(bytes.fromhex(v["unique_id_hex"]), v["counter"])
        assert got.hex().upper() == v["rotating_id_hex"].upper(), v


def test_invalid_passcode_list(onboarding_vectors):
    invalid = onboarding_vectors["invalid_passcodes"]
    assert len(invalid) == 12
    assert frozenset(invalid) == identity.INVALID_PASSCODES
    for passcode in invalid:
        with pytest.raises(InvalidInput) as exc:
            identity.validate_passcode(passcode)
        assert exc.value.field == "passcode"


def test_passcode_range(onboarding_vectors):
    low, high = onboarding_vectors["passcode_range"]
    assert (low, high) == (identity.PASSCODE_MIN, identity.PASSCODE_MAX)
    assert identity.validate_passcode(low) == low
    assert identity.validate_passcode(high) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(InvalidInput) as exc:
            identity.validate_passcode(outside)
        assert exc.value.field == "passcode"
