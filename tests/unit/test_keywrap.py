"""AES-256-GCM key wrapping: round trip, context binding, tamper detection."""

from __future__ import annotations

import base64
import secrets

import pytest

from matterfab.errors import IntegrityError
from matterfab.keywrap import KeyWrapper


def test_round_trip_and_fresh_nonce() -> None:
    w = KeyWrapper(secrets.token_bytes(32))
    secret = secrets.token_bytes(32)
    a, b = w.wrap(secret, "dac-key:O/0000001"), w.wrap(secret, "dac-key:O/0000001")
    assert a != b  # a new nonce every time
    assert w.unwrap(a, "dac-key:O/0000001") == secret
    assert secret.hex() not in base64.b64decode(a).hex()


def test_wrong_context_is_refused() -> None:
    w = KeyWrapper(secrets.token_bytes(32))
    blob = w.wrap(b"k" * 32, "dac-key:O/0000001")
    with pytest.raises(IntegrityError, match="failed authentication"):
        w.unwrap(blob, "dac-key:O/0000002")


def test_tampering_and_wrong_kek_are_detected() -> None:
    w = KeyWrapper(secrets.token_bytes(32))
    raw = bytearray(base64.b64decode(w.wrap(b"k" * 32, "c")))
    raw[-1] ^= 1
    with pytest.raises(IntegrityError):
        w.unwrap(base64.b64encode(bytes(raw)).decode(), "c")
    with pytest.raises(IntegrityError):
        KeyWrapper(secrets.token_bytes(32)).unwrap(w.wrap(b"k" * 32, "c"), "c")
    with pytest.raises(IntegrityError, match="base64"):
        w.unwrap("not base64!", "c")


def test_kek_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyWrapper(b"short")
