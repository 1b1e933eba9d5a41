"""Device-born keys (`dac_storage: device-key`): the CSR a device prints and the DAC over its key.

The chip makes its P-256 key and prints a PKCS#10 request among its log lines; only the
request leaves it. `extract_csr_pem` finds exactly one PEM `CERTIFICATE REQUEST` in such
output; `check_csr` verifies the request's self-signature (proof that whoever sent it holds
the private key) and that the key is P-256 (Matter Core spec §6.2.2: DAC keys are secp256r1);
`issue_dac_for_key` issues the DAC over that public key by the same profile rules as
`attestation.issue_dac`, verified against the PAI before it is returned. No I/O here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import InvalidInput, invalid
from matterfab.matter import attestation

PEM_BLOCK = re.compile(
    r"-----BEGIN (NEW )?CERTIFICATE REQUEST-----\s*?\n(.*?)"
    r"-----END (NEW )?CERTIFICATE REQUEST-----",
    re.S,
)
MAX_CSR_PEM = 4096  # a P-256 CSR is ~450 characters; anything far larger is not one


@dataclass(frozen=True)
class CheckedCsr:
    """A request whose self-signature verified, over a P-256 key."""

    pem: str
    public_key: ec.EllipticCurvePublicKey
    public_key_raw: bytes  # 65-octet uncompressed point, as the chip holds it
    public_key_sha256: str  # hex: the per-product uniqueness key


def extract_csr_pem(output: str) -> str:
    """The one PEM `CERTIFICATE REQUEST` in a command's output (other lines allowed)."""
    found = [m.group(0) for m in PEM_BLOCK.finditer(output)]
    if not found:
        raise invalid("csr", "the csr command printed no PEM CERTIFICATE REQUEST")
    if len(found) > 1:
        raise invalid("csr", f"the csr command printed {len(found)} CSRs, must print exactly one")
    return "\n".join(line.strip() for line in found[0].strip().splitlines()) + "\n"


def public_key_raw(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-octet uncompressed point of a P-256 public key."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def check_csr(pem: str) -> CheckedCsr:
    """Parse a PEM CSR; InvalidInput (field `csr`) unless it is well formed, its
    self-signature verifies, and its key is EC P-256."""
    if len(pem) > MAX_CSR_PEM:
        raise invalid("csr", f"must be at most {MAX_CSR_PEM} characters of PEM")
    try:
        req = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise invalid("csr", "is not a well-formed PEM CERTIFICATE REQUEST") from None
    try:
        key = req.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise invalid("csr", "has a public key this signer cannot read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        name = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise invalid("csr", f"key must be EC P-256 (secp256r1), not {name}")
    try:
        valid = req.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise invalid("csr", "self-signature does not verify: the sender does not hold its key")
    raw = public_key_raw(key)
    return CheckedCsr(pem, key, raw, hashlib.sha256(raw).hexdigest())


def issue_dac_for_key(
    *,
    public_key: ec.EllipticCurvePublicKey,
    pai_cert: x509.Certificate,
    signer: attestation.PaiSigner,
    vendor_id: int,
    product_id: int,
    not_before: datetime,
    not_after: datetime | None,
) -> x509.Certificate:
    """A DAC over a device's own key under `pai_cert`, verified against the PAI."""
    return attestation.issue_dac_over(
        public_key,
        pai_cert=pai_cert,
        signer=signer,
        vendor_id=vendor_id,
        product_id=product_id,
        not_before=not_before,
        not_after=not_after,
        serial=secrets.randbits(159) or 1,
    )


def dac_over_key(dac_der: bytes, key_raw: bytes) -> bool:
    """True when the DAC (DER) certifies exactly the 65-octet public key `key_raw`."""
    try:
        cert = x509.load_der_x509_certificate(dac_der)
        key = cert.public_key()
    except ValueError:
        return False
    return isinstance(key, ec.EllipticCurvePublicKey) and public_key_raw(key) == key_raw


__all__ = [
    "CheckedCsr",
    "InvalidInput",
    "check_csr",
    "dac_over_key",
    "extract_csr_pem",
    "issue_dac_for_key",
    "public_key_raw",
]
