"""A PAI's certificate revocation list and its DCL revocation point, as pure functions.

Matter 1.3+ controllers build a revocation set from the DCL: each revocation point names a
CRL signer certificate (here the PAI), and the CRL at its `dataURL` lists revoked DAC serials
(connectedhomeip `credentials/generate_revocation_set.py`: the CRL's authorityKeyIdentifier
must equal the signer's subjectKeyIdentifier; entries are keyed by issuer and serial).

The CRL is an X.509 v2 CRL (RFC 5280 §5): issuer = the PAI subject, thisUpdate/nextUpdate,
extensions authorityKeyIdentifier (the PAI's SKID) and cRLNumber, and per revoked DAC its
serial, revocation date and reasonCode (§5.3.1; absent for `unspecified`, as §5.3.1 asks).

Signing goes through `PaiSigner.sign_digest`, so a PAI key in an HSM signs CRLs exactly as it
signs DACs: cryptography builds the TBSCertList with a throwaway key (the signature algorithm
is fixed, so the TBS bytes do not depend on the key) and the PAI key signs its digest.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError, invalid
from matterfab.matter.attestation import (
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    InMemorySigner,
    PaiSigner,
    _assemble_certificate,
    subject_matter_id,
)

# RFC 5280 §5.3.1 CRLReason, by the names the CLI takes (the five, in spec order).
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}
REASON_CODES = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3,
                "superseded": 4, "cessationOfOperation": 5}  # fmt: skip
REVOCATION_TYPE_CRL = 1  # DCL RevocationType 1: an RFC 5280 CRL
DIGEST_TYPE_SHA256 = 1  # IANA Named Information Hash Algorithm Registry: sha-256
MAX_CRL_NUMBER_OCTETS = 20  # RFC 5280 §5.2.3

# Any P-256 key yields the same TBSCertList bytes; see the module docstring.
_TBS_KEY = ec.generate_private_key(ec.SECP256R1())


def check_reason(reason: str) -> str:
    """`reason` if it is one of REASONS; InvalidInput naming the list otherwise."""
    if reason not in REASONS:
        raise invalid("reason", f"must be one of {', '.join(REASONS)}, got {reason!r}")
    return reason


@dataclass(frozen=True)
class RevokedDac:
    """One CRL entry: a DAC serial (hex, as the ledger writes it), when and why."""

    serial_hex: str
    revoked_at: datetime
    reason: str


def _pai_skid(pai: x509.Certificate) -> bytes:
    try:
        return pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound as exc:
        raise AttestationError("PAI certificate has no subjectKeyIdentifier") from exc


def build_crl(
    *,
    pai: x509.Certificate,
    signer: PaiSigner,
    number: int,
    revoked: Iterable[RevokedDac],
    this_update: datetime,
    next_update_days: int,
) -> bytes:
    """The DER of a v2 CRL of `revoked` under `pai`, numbered `number`, signed by `signer`."""
    if number < 1 or (number.bit_length() + 8) // 8 > MAX_CRL_NUMBER_OCTETS:
        raise invalid("crl_number", "must be positive and fit in 20 octets")
    if next_update_days < 1:
        raise invalid("next_update_days", "must be at least 1")
    if signer.public_key() != pai.public_key():
        raise invalid("key_source", "the signing key does not match the PAI certificate")
    this_update = this_update.astimezone(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pai.subject)
        .last_update(this_update)
        .next_update(this_update + timedelta(days=next_update_days))
        .add_extension(x509.AuthorityKeyIdentifier(_pai_skid(pai), None, None), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in sorted(revoked, key=lambda e: int(e.serial_hex, 16)):
        check_reason(entry.reason)
        rc = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial_hex, 16))
            .revocation_date(entry.revoked_at.astimezone(UTC).replace(microsecond=0))
        )
        if entry.reason != "unspecified":  # RFC 5280 §5.3.1: absent rather than unspecified
            rc = rc.add_extension(x509.CRLReason(REASONS[entry.reason]), critical=False)
        builder = builder.add_revoked_certificate(rc.build())
    if isinstance(signer, InMemorySigner):
        crl = builder.sign(signer.private_key, hashes.SHA256())
        der = crl.public_bytes(serialization.Encoding.DER)
    else:
        tbs = builder.sign(_TBS_KEY, hashes.SHA256()).tbs_certlist_bytes
        # CertificateList has Certificate's shape: SEQUENCE { tbs, algorithm, signature }.
        der = _assemble_certificate(tbs, signer.sign_digest(hashlib.sha256(tbs).digest()))
        crl = x509.load_der_x509_crl(der)
    if not crl.is_signature_valid(pai.public_key()):  # type: ignore[arg-type]
        raise AttestationError("the CRL's signature does not verify against the PAI")
    return der


def crl_number(der: bytes) -> int:
    """The cRLNumber of a DER CRL."""
    crl = x509.load_der_x509_crl(der)
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def revocation_point(
    *, pai: x509.Certificate, crl_der: bytes, data_url: str | None, label: str
) -> dict[str, Any]:
    """The DCL revocation point (PkiRevocationDistributionPoint fields) for this CRL.

    `pid` is present only when the PAI's subject carries one (DCL: "provided if and only if
    IsPAA is false and CRLSignerCertificate has a PID"). `dataFileSize`, `dataDigest` (base64
    SHA-256 of the CRL file) and `dataDigestType` (1, sha-256) let a maker check the file it
    uploads; the DCL's own validation currently wants them empty for revocationType 1, so
    leave them out of `dcld tx pki add-revocation-point` (docs/after-the-line.md). Without
    `data_url` (not known yet) `dataURL` is null: fill it in before publishing.
    """
    vid = subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID")
    if vid is None:
        raise invalid("attestation_profile", "the PAI has no VendorID: not a VID-scoped PAI")
    if data_url is not None and not data_url.startswith(("http://", "https://")):
        raise invalid("data_url", f"must start with http:// or https://, got {data_url!r}")
    if not 1 <= len(label) <= 64:
        raise invalid("label", "must be 1..64 characters")
    point: dict[str, Any] = {
        "vid": vid,
        "isPAA": False,
        "label": label,
        "crlSignerCertificate": pai.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "issuerSubjectKeyID": _pai_skid(pai).hex().upper(),
        "dataURL": data_url,
        "dataFileSize": len(crl_der),
        "dataDigest": base64.b64encode(hashlib.sha256(crl_der).digest()).decode("ascii"),
        "dataDigestType": DIGEST_TYPE_SHA256,
        "revocationType": REVOCATION_TYPE_CRL,
    }
    pid = subject_matter_id(pai.subject, PRODUCT_ID_OID, "PAI ProductID")
    if pid is not None:
        point["pid"] = pid
    return dict(sorted(point.items()))
