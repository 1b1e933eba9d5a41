"""Throwaway test PKI: PAA, PAI and CD signing certificates (Matter Core §6.2.2.4, §6.2.2.5).

For `matterfab pki init-test` and tests only; production PAIs come from the manufacturer's PAA
and production CDs from the CSA. Profiles follow the Matter SDK test certificates:
  PAA  self-signed, CA:TRUE pathlen 1 critical, keyUsage keyCertSign+cRLSign critical,
       SKID, AKID = own SKID, optional VendorID in the subject;
  PAI  CA:TRUE pathlen 0 critical, same keyUsage, SKID, AKID = PAA's SKID, VendorID (and
       optional ProductID) in the subject as UTF8String under the Matter OIDs (§6.2.2.2).
All keys are P-256 and all signatures ecdsa-with-SHA256. Pure: returns objects, writes nothing.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from matterfab.errors import invalid
from matterfab.matter.attestation import (
    DIGITAL_SIGNATURE_ONLY,
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    matter_id_text,
)

DEFAULT_PAA_DAYS = 20 * 365  # the SDK test PAA is valid 20 years
DEFAULT_PAI_DAYS = 10 * 365
DEFAULT_CD_SIGNING_DAYS = 10 * 365
# Back-date by an hour so a certificate made now is valid on a line whose clock is a bit behind.
_CLOCK_SKEW = timedelta(hours=1)

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def check_vid(vendor_id: int) -> None:
    """InvalidInput('vendor_id') unless 0x0001..0xFFF4."""
    if (
        isinstance(vendor_id, bool)
        or not isinstance(vendor_id, int)
        or not 1 <= vendor_id <= 0xFFF4
    ):
        raise invalid("vendor_id", f"must be 0x0001..0xFFF4 (0 is reserved), got {vendor_id!r}")


def check_pid(product_id: int) -> None:
    """InvalidInput('product_id') unless 0x0001..0xFFFF."""
    if isinstance(product_id, bool) or not isinstance(product_id, int):
        raise invalid("product_id", f"must be an integer, got {product_id!r}")
    if not 1 <= product_id <= 0xFFFF:
        raise invalid("product_id", f"must be 0x0001..0xFFFF (0 is reserved), got {product_id}")


def _name(common_name: str, vendor_id: int | None, product_id: int | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if vendor_id is not None:
        attrs.append(x509.NameAttribute(VENDOR_ID_OID, matter_id_text(vendor_id)))
    if product_id is not None:
        attrs.append(x509.NameAttribute(PRODUCT_ID_OID, matter_id_text(product_id)))
    return x509.Name(attrs)


def _validity(now: datetime | None, days: int) -> tuple[datetime, datetime]:
    if days < 1:
        raise invalid("valid_days", f"must be at least 1, got {days}")
    start = (now or datetime.now(UTC)) - _CLOCK_SKEW
    return start, start + timedelta(days=days)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key_id: bytes | None,
    validity: tuple[datetime, datetime],
) -> x509.CertificateBuilder:
    skid = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(secrets.randbits(63) or 1)  # SDK test certificates use 8-octet serials
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(skid, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(issuer_key_id or skid.digest, None, None), critical=False
        )
    )


def _skid(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def make_paa(
    common_name: str = "matterfab Test PAA",
    vendor_id: int | None = None,
    *,
    valid_days: int = DEFAULT_PAA_DAYS,
    now: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed test PAA (pathlen 1), with its new P-256 key."""
    if vendor_id is not None:
        check_vid(vendor_id)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, vendor_id, None)
    cert = (
        _builder(name, name, key.public_key(), None, _validity(now, valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_pai(
    paa_cert: x509.Certificate,
    paa_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    vendor_id: int,
    product_id: int | None = None,
    *,
    common_name: str = "matterfab Test PAI",
    valid_days: int = DEFAULT_PAI_DAYS,
    now: datetime | None = None,
) -> x509.Certificate:
    """A PAI certificate (pathlen 0) for a given public key, e.g. one generated in an HSM."""
    check_vid(vendor_id)
    if product_id is not None:
        check_pid(product_id)
    start, end = _validity(now, valid_days)
    # A certificate may not outlive its issuer: clamp to the PAA's validity.
    start = max(start, paa_cert.not_valid_before_utc)
    end = min(end, paa_cert.not_valid_after_utc)
    if end <= start:
        raise invalid("paa_cert", "has expired or is not yet valid")
    return (
        _builder(
            _name(common_name, vendor_id, product_id),
            paa_cert.subject,
            public_key,
            _skid(paa_cert),
            (start, end),
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(paa_key, hashes.SHA256())
    )


def make_pai(
    paa_cert: x509.Certificate,
    paa_key: ec.EllipticCurvePrivateKey,
    vendor_id: int,
    product_id: int | None = None,
    *,
    common_name: str = "matterfab Test PAI",
    valid_days: int = DEFAULT_PAI_DAYS,
    now: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A test PAI under `paa_cert`, with its new P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_pai(
        paa_cert,
        paa_key,
        key.public_key(),
        vendor_id,
        product_id,
        common_name=common_name,
        valid_days=valid_days,
        now=now,
    )
    return cert, key


def make_cd_signing(
    common_name: str = "matterfab Test CD Signing",
    *,
    valid_days: int = DEFAULT_CD_SIGNING_DAYS,
    now: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed test CD signing certificate (digitalSignature) and its new key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, None, None)
    cert = (
        _builder(name, name, key.public_key(), None, _validity(now, valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(DIGITAL_SIGNATURE_ONLY, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key
