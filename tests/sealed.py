"""Test helpers for sealed objects (issue #20): open them, and scan for leaked secrets.

`open_if_sealed` gives a sealed object's plaintext for tests that read what a station flashes.
`secret_forms` and `find_secrets` are the scan: every encoding a DAC private key or an XTS key
could take in the bucket or on a topic (raw, hex, base64, DER: SEC1 and PKCS#8), and where any
of them occurs in a set of blobs. Reused by every dac_storage mode's scan test (also
`device-key`, issue #21): give it the secrets of your orders and every blob you can read.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import lines, sealing
from matterfab.objectstore import MemoryObjectStore
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack

# State folders of the stacks this test session started (tests/stacks.py): their line keys
# open sealed objects for helpers that are not handed a stack (tests.pipeline.device_objects).
STATES: list[Path] = []


def session_keys() -> lines.LineKeys:
    """Every line key in the state folders of this session's stacks."""
    found = []
    for state in STATES:
        for pem in sorted((state / lines.KEYS_DIR).glob("*.pem")):
            found.append(lines.read_private_key(pem))
    return lines.LineKeys("*", found)


def local_keys(state: Path, line: str = lines.DEFAULT_LINE) -> lines.LineKeys:
    """The keys a station of `line` would find in the state folder `state`."""
    return lines.LineKeys.load(line, [], state)


def open_if_sealed(data: bytes, keys: lines.LineKeys) -> bytes:
    """The plaintext of a sealed object (opened for the binding its header names), else data."""
    if not sealing.is_sealed(data):
        return data
    binding, _ = sealing.parse(data)
    return sealing.open_sealed(data, keys.keys[binding.key], binding)


def _b64_forms(raw: bytes) -> list[bytes]:
    """Base64 of `raw` as it appears inside a longer base64 text, whatever its alignment:
    whichever of raw[0:], raw[1:], raw[2:] starts on a 3-byte group is encoded as is."""
    forms = []
    for skip in range(3):
        whole = raw[skip : skip + 3 * ((len(raw) - skip) // 3)]
        forms += [base64.b64encode(whole), base64.urlsafe_b64encode(whole)]
    return [f for f in forms if len(f) >= 16]


def secret_forms(name: str, raw: bytes) -> dict[str, bytes]:
    """Every encoding of a secret to look for, by label: raw, hex (both cases), base64
    (standard and URL-safe, at every alignment); for a P-256 scalar also its SEC1 and
    PKCS#8 DER (and their base64)."""
    forms = {f"{name} raw": raw, f"{name} hex": raw.hex().encode()}
    forms[f"{name} HEX"] = raw.hex().upper().encode()
    for n, b in enumerate(_b64_forms(raw)):
        forms[f"{name} base64#{n}"] = b
    if len(raw) == 32:
        try:
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        except ValueError:
            return forms
        formats = {
            "SEC1": serialization.PrivateFormat.TraditionalOpenSSL,
            "PKCS8": serialization.PrivateFormat.PKCS8,
        }
        for label, fmt in formats.items():
            der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
            forms[f"{name} DER {label}"] = der
            for n, b in enumerate(_b64_forms(der)):
                forms[f"{name} DER {label} base64#{n}"] = b
    return forms


def find_secrets(secrets: Mapping[str, bytes], blobs: Iterable[tuple[str, bytes]]) -> list[str]:
    """`<blob> holds <secret form>` for every secret form found in any blob."""
    forms = {
        label: form
        for name, raw in secrets.items()
        for label, form in secret_forms(name, raw).items()
    }
    found = []
    for where, blob in blobs:
        for label, form in forms.items():
            if form in blob:
                found.append(f"{where} holds {label}")
    return found


def register_line(store: MemoryObjectStore, line: str = lines.DEFAULT_LINE) -> lines.LineKey:
    """Register `line` with a fresh key in an in-memory bucket, synchronously (for rigs that
    build a bucket outside an event loop); the private key is discarded."""
    key = sealing.generate().public_key()
    entry = lines.LineKey(line, 1, sealing.fingerprint(key), sealing.public_pem(key).decode(), "")
    store.objects[lines.key_object(line, 1)] = entry.to_json()
    return entry


def ensure_line(stack: LocalStack, line: str) -> None:
    """Register `line` on the stack, its key in the stack's state folder (where stations of
    the line find it), from sync or async tests alike (a thread runs the coroutine)."""

    async def work() -> None:
        async with ObjectStore.open(stack.s3_settings()) as store:
            await lines.ensure_local_line(store, stack.home, line)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(work())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
