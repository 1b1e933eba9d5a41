"""Wrap secrets (DAC private keys, NVS keys) with AES-256-GCM under the key-encryption key.

A wrapped blob is `version (1) ‖ nonce (12) ‖ ciphertext+tag`, base64 on the wire. The
associated data binds a blob to its device and purpose, so a wrapped key copied onto another
device's message fails to unwrap instead of silently attesting the wrong device.
"""

from __future__ import annotations

import base64
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from matterfab.errors import IntegrityError

WRAP_VERSION = 1
NONCE_LEN = 12
KEK_LEN = 32


class KeyWrapper:
    """AES-256-GCM wrap/unwrap with one key-encryption key."""

    def __init__(self, kek: bytes):
        if len(kek) != KEK_LEN:
            raise ValueError(f"the key-encryption key must be {KEK_LEN} bytes, got {len(kek)}")
        self._aead = AESGCM(kek)
        self._kek = kek

    def derive(self, purpose: str) -> bytes:
        """A 32-byte secret for one purpose, derived from the KEK (HMAC-SHA256 over `purpose`).

        The builder seals deterministically with one (matterfab/sealing.py): only KEK holders
        can compute it, and it never leaves the process.
        """
        return hmac.new(self._kek, purpose.encode(), "sha256").digest()

    def wrap(self, secret: bytes, context: str) -> str:
        """Encrypt `secret` bound to `context` (e.g. `dac-key:<device_id>`); base64 text."""
        nonce = os.urandom(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, secret, context.encode())
        return base64.b64encode(bytes([WRAP_VERSION]) + nonce + sealed).decode()

    def unwrap(self, wrapped: str, context: str) -> bytes:
        """Decrypt a blob made by `wrap` with the same context; IntegrityError if tampered."""
        try:
            raw = base64.b64decode(wrapped, validate=True)
        except ValueError:
            raise IntegrityError(f"wrapped key for {context!r} is not valid base64") from None
        if len(raw) < 1 + NONCE_LEN + 16 or raw[0] != WRAP_VERSION:
            raise IntegrityError(f"wrapped key for {context!r} has an unknown format")
        try:
            return self._aead.decrypt(
                raw[1 : 1 + NONCE_LEN], raw[1 + NONCE_LEN :], context.encode()
            )
        except InvalidTag:
            raise IntegrityError(
                f"wrapped key for {context!r} failed authentication (tampered or wrong KEK)"
            ) from None
