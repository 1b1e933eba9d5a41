"""Sealing a device's secrets to a production line: HPKE (RFC 9180) to the line's X25519 key.

Only the station that flashes a device needs its secrets (the DAC private key in
`partition.bin` or `esp_secure_cert.bin`, the XTS keys in `nvs_keys.bin`). The builder seals
each such object, in memory, to the public key of the order's line; the bucket, the topics and a
fetch without the line's key only ever see the sealed bytes.

A sealed object is `MAGIC`, one line of plain JSON (the header: line, key fingerprint, order,
device, file name, and `encoding` when the sealed bytes are encoded), then HPKE's `enc` (32
bytes) and the ciphertext. The header is also HPKE's `info`, so the ciphertext is bound to it:
an object moved to another device, order or file name, or under a rewritten header, does not
open. The opener checks the header against what it expects first (a clear reason, and `verify`
can do it without the key), then opens with the `info` built from what it expects, never from
what the header says — except the encoding, which only the header says, and which the info
therefore authenticates: a header whose encoding was added, removed or changed does not open.

Encoding (issue #26): what is sealed may be the plaintext encoded, named in the header:
"" (absent from the header: the plaintext itself; every object sealed before encodings existed)
or `ff-runs/1` (`matterfab/ffruns.py`: runs of 0xFF elided, ~10x smaller for a partition).
Opening decodes it back to the plaintext, exactly the size the ref's `sealed.size` gives; the
refs' `sealed` digests and sizes stay the plaintext's. A header without `encoding` is the same
bytes as before, so objects sealed before, and objects sealed without one, are unchanged.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM (RFC 9180 §7, ids 0x0020, 0x0001,
0x0001), base mode, single shot. Opening is `cryptography` 50's `hazmat.primitives.hpke`.
Sealing is the same RFC 9180 base-mode encryption written out here (`_seal_with`), for one
reason: its ephemeral key comes from `DeriveKeyPair(ikmE)` with `ikmE` = HMAC-SHA256 of a
builder secret (derived from the KEK) over the info and the plaintext's digest, instead of the
library's random one. So sealing is deterministic: a redelivered lot rebuilds byte-identical
objects and write-once storage keeps treating different bytes as an alarm, never as normal.
Every object sealed here is opened by the library (tests), and `_seal_with` reproduces RFC
9180's test vector A.1.1 from its ikmE. Objects sealed together share one encapsulation
(`seal_device`), each with a context (info) of its own: the builder seals a whole lot's
pieces so (one X25519 pair a lot, not two operations a device; issue #26).

Base mode authenticates no sender (anyone holding the public key can seal), so readers also
check the sealed object's sha256 and the plaintext's sha256 given in the ref that the builder
published.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from matterfab import ffruns
from matterfab.errors import MatterfabError

MAGIC = b"matterfab-sealed/1\n"
SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM"
SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
ENC_SIZE = 32  # X25519 encapsulated key
TAG_SIZE = 16  # AES-GCM tag
MAX_HEADER = 1024  # a header is ~250 bytes; anything longer is not one of ours
FINGERPRINT_HEX = 32  # 128 bits of SHA-256 of the raw public key
SEALED_SUFFIX = ".sealed"  # `order fetch` without the key writes `<name>.sealed`
PLAIN = ""  # no encoding: the sealed bytes are the plaintext (the header names none)
FF_RUNS = ffruns.NAME  # runs of 0xFF elided (matterfab/ffruns.py)
ENCODINGS = (PLAIN, FF_RUNS)
# What an encoded object may decode to when its opener does not know the plaintext's size
# (`open_sealed` without `size`): no piece a station flashes comes near a 16 MiB flash chip.
MAX_PLAINTEXT = 16 * 1024 * 1024


class SealError(MatterfabError):
    """A sealed object that cannot be opened here; the message says why (never a secret)."""

    code = "sealed"


@dataclass(frozen=True)
class Binding:
    """What a sealed object is for: its line and key, its order, device and file name."""

    line: str
    key: str  # fingerprint of the line key it is sealed to
    order_id: str
    device_id: str
    file: str  # per-device file name: partition.bin, esp_secure_cert.bin, nvs_keys.bin
    encoding: str = PLAIN  # how the sealed bytes encode the plaintext: "" or "ff-runs/1"

    def header(self) -> bytes:
        """The header line: compact JSON with sorted keys (also HPKE's info, after MAGIC)."""
        # The fields by name, not `asdict` (a deep copy: a third of sealing's Python time).
        fields = {
            "line": self.line,
            "key": self.key,
            "order_id": self.order_id,
            "device_id": self.device_id,
            "file": self.file,
        }
        if self.encoding:  # named only when set: unencoded objects keep their exact bytes
            fields["encoding"] = self.encoding
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def info(self) -> bytes:
        """HPKE's `info`: the format tag and the header, so the ciphertext is bound to both."""
        return MAGIC + self.header()


def fingerprint(public_key: X25519PublicKey) -> str:
    """A line key's fingerprint: the first 128 bits of SHA-256 of its raw 32 bytes, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:FINGERPRINT_HEX]


def generate() -> X25519PrivateKey:
    """A new line key pair."""
    return X25519PrivateKey.generate()


def private_pem(key: X25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (written 0600 by the caller)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: X25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(pem: bytes, where: str) -> X25519PrivateKey:
    """An X25519 private key from PEM; SealError naming `where` when it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SealError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise SealError(f"{where}: must be an X25519 private key (line keys are X25519)")
    return key


def load_public(pem: bytes, where: str) -> X25519PublicKey:
    """An X25519 public key from PEM; SealError naming `where` when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SealError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, X25519PublicKey):
        raise SealError(f"{where}: must be an X25519 public key (line keys are X25519)")
    return key


def seal(plaintext: bytes, public_key: X25519PublicKey, binding: Binding, secret: bytes) -> bytes:
    """The sealed object: MAGIC, header line, HPKE enc ‖ ciphertext bound to the header.

    Deterministic for one `secret` (see the module docstring): the same plaintext for the same
    binding and key seals to the same bytes.
    """
    return seal_device([(plaintext, binding)], public_key, secret)[0]


def seal_device(
    objects: Sequence[tuple[bytes, Binding]],
    public_key: X25519PublicKey,
    secret: bytes,
    digests: Sequence[bytes] | None = None,
    *,
    elide: bool = False,
) -> list[bytes]:
    """Seal objects (each with its own binding: a device's, or a lot's) with one encapsulation.

    The X25519 operations are most of sealing's cost, so the objects share one
    ephemeral key (derived from all of them): one KEM shared secret, then for each object its
    own HPKE context through its own `info` (the key schedule's info_hash), so each object's
    key and nonce are independent and each opens alone, with the library's single-shot open.
    `digests`: the plaintexts' SHA-256 when the caller has them already (the builder's refs).
    Each plaintext is sealed as its binding's `encoding` says; `elide`: a binding without
    one gets `ff-runs/1` when that is shorter than the plaintext (flash images; random key
    bytes stay plain). The ephemeral key still covers what is sealed: every info (encoding
    included) and every plaintext's digest, and the encoding is a function of the plaintext,
    so sealing stays deterministic.
    """
    fp = fingerprint(public_key)
    for _, binding in objects:
        if binding.key != fp:
            raise SealError(f"binding names key {binding.key}, not the key given")
    if digests is None:
        digests = [hashlib.sha256(pt).digest() for pt, _ in objects]
    bodies = [_encoded(pt, b, elide) for pt, b in objects]
    infos = [b.info() for _, b in bodies]  # each header serialised once
    material = b"".join(info + d for info, d in zip(infos, digests, strict=True))
    ikm_e = hmac.digest(secret, material, "sha256")
    enc, shared = _encap(ikm_e, public_key)
    secret_ = _schedule_secret(shared)
    return [
        info + b"\n" + enc + _seal_in_context(secret_, info, body)
        for (body, _), info in zip(bodies, infos, strict=True)
    ]


def _encoded(plaintext: bytes, binding: Binding, elide: bool) -> tuple[bytes, Binding]:
    """What to seal for `plaintext` and the binding that names its encoding."""
    if binding.encoding == FF_RUNS:
        return ffruns.encode(plaintext), binding
    if binding.encoding:
        raise SealError(f"unknown encoding {binding.encoding!r} (known: {FF_RUNS})")
    if elide:
        body = ffruns.encode(plaintext)
        if len(body) < len(plaintext):
            return body, replace(binding, encoding=FF_RUNS)
    return plaintext, binding


# RFC 9180 base mode for the suite above, with the ephemeral key derived from `ikm_e` (§7.1.3
# DeriveKeyPair), as the RFC's test vectors do. Names follow the RFC.
_KEM_ID, _KDF_ID, _AEAD_ID = 0x0020, 0x0001, 0x0001
_KEM_SUITE = b"KEM" + _KEM_ID.to_bytes(2, "big")
_HPKE_SUITE = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (_KEM_ID, _KDF_ID, _AEAD_ID))
_NK, _NN = 16, 12  # AES-128-GCM key and nonce sizes


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, b"HPKE-v1" + suite + label + ikm, "sha256")


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    # One HKDF-Expand block (length <= 32 here).
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    return hmac.digest(prk, labeled + b"\x01", "sha256")[:length]


def _encap(ikm_e: bytes, pk_r: X25519PublicKey) -> tuple[bytes, bytes]:
    """Encap with skE = DeriveKeyPair(ikm_e): (enc, shared_secret)."""
    dkp_prk = _labeled_extract(_KEM_SUITE, b"", b"dkp_prk", ikm_e)
    sk_e = X25519PrivateKey.from_private_bytes(_labeled_expand(_KEM_SUITE, dkp_prk, b"sk", b"", 32))
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    enc = sk_e.public_key().public_bytes(*raw)
    kem_context = enc + pk_r.public_bytes(*raw)
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", sk_e.exchange(pk_r))
    return enc, _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)


_PSK_ID_HASH = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")  # mode_base: no PSK


def _schedule_secret(shared: bytes) -> bytes:
    """KeySchedule's `secret` (mode_base, empty psk): one per encapsulation."""
    return _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")


def _seal_in_context(secret: bytes, info: bytes, pt: bytes, aad: bytes = b"") -> bytes:
    """The rest of KeyScheduleS (mode_base) for `info`, then Seal at sequence 0."""
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + _PSK_ID_HASH + info_hash  # mode_base
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, _NK)
    nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, _NN)
    return AESGCM(key).encrypt(nonce, pt, aad)


def _seal_with(
    ikm_e: bytes, pk_r: X25519PublicKey, info: bytes, pt: bytes, aad: bytes = b""
) -> bytes:
    """SetupBaseS with DeriveKeyPair(ikm_e), then Seal (sequence 0): enc ‖ ciphertext."""
    enc, shared = _encap(ikm_e, pk_r)
    return enc + _seal_in_context(_schedule_secret(shared), info, pt, aad)


def is_sealed(data: bytes) -> bool:
    """Whether `data` is a sealed object (by its format tag)."""
    return data.startswith(MAGIC)


def parse(data: bytes) -> tuple[Binding, bytes]:
    """A sealed object's header and its HPKE part (enc ‖ ciphertext); SealError if malformed."""
    if not data.startswith(MAGIC):
        raise SealError("not a sealed object (no matterfab-sealed/1 tag)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise SealError("sealed object header is not terminated")
    try:
        fields = json.loads(data[len(MAGIC) : end])
        binding = Binding(**fields)
    except (ValueError, TypeError) as exc:
        raise SealError(f"sealed object header is malformed ({exc})") from None
    if not all(isinstance(v, str) for v in asdict(binding).values()):
        raise SealError("sealed object header is malformed (values must be strings)")
    if "encoding" in fields and fields["encoding"] not in ENCODINGS[1:]:
        # Named only when set (Binding.header), so "" is no header of ours either.
        raise SealError(
            f"sealed object header names unknown encoding {fields['encoding']!r} (known: {FF_RUNS})"
        )
    body = data[end + 1 :]
    if len(body) < ENC_SIZE + TAG_SIZE:
        raise SealError("sealed object is truncated")
    return binding, body


def mismatch(found: Binding, expected: Binding) -> str | None:
    """Why a header is not the expected one (first difference, plain words), or None.

    The encoding is not compared: it is how the object was sealed, which only its header says
    (and its info authenticates), not what it is for."""
    if found.order_id != expected.order_id or found.device_id != expected.device_id:
        return f"sealed for device {found.device_id}, not {expected.device_id}"
    if found.file != expected.file:
        return f"sealed as {found.file}, not {expected.file}"
    if found.line != expected.line:
        return f"sealed for line {found.line}, not {expected.line}"
    if found.key != expected.key:
        return f"sealed to line key {found.key}, not {expected.key}"
    return None


def open_sealed(
    data: bytes, private_key: X25519PrivateKey, expected: Binding, size: int | None = None
) -> bytes:
    """The plaintext of a sealed object meant for `expected`; SealError saying why not.

    The header must equal `expected` (its encoding aside), and the ciphertext must open with
    `private_key` (whose fingerprint must be `expected.key`) under the info of `expected` with
    the header's encoding; an encoded object is then decoded. `size`: the plaintext's size
    (the ref's `sealed.size`), which an encoded object must decode to exactly; without it, to
    at most MAX_PLAINTEXT bytes.
    """
    found, body = parse(data)
    why = mismatch(found, expected)
    if why is not None:
        raise SealError(why)
    if fingerprint(private_key.public_key()) != expected.key:
        raise SealError(f"sealed to line key {expected.key}, which this key is not")
    info = replace(expected, encoding=found.encoding).info()
    try:
        sealed = SUITE.decrypt(body, private_key, info)
    except InvalidTag:
        raise SealError("does not open: altered, or sealed for another device or file") from None
    return decode(found.encoding, sealed, size)


def decode(encoding: str, body: bytes, size: int | None = None) -> bytes:
    """The plaintext of an opened object's `body` sealed with `encoding`; SealError if it does
    not decode (to exactly `size` bytes when given, else to at most MAX_PLAINTEXT)."""
    if encoding == PLAIN:
        return body
    if encoding != FF_RUNS:
        raise SealError(f"unknown encoding {encoding!r} (known: {FF_RUNS})")
    try:
        if size is None:
            size = ffruns.decoded_size(body, MAX_PLAINTEXT)
        return ffruns.decode(body, size)
    except ffruns.MalformedRuns as exc:
        raise SealError(f"opened, but its {encoding} body is malformed: {exc}") from None
