"""The Matter PAI profile: what a maker's PAI must be, and the CSR that asks a PAA for one.

Checks follow Matter Core §6.2.2.4 (PAI) and §6.2.2.5 (PAA), on certificates a maker brings:
  PAI  X.509 v3, P-256 key, ecdsa-with-SHA256, DER at most 600 octets, positive serial of at
       most 20 octets; basicConstraints critical CA:TRUE pathLenConstraint 0; keyUsage critical
       with keyCertSign and cRLSign (digitalSignature allowed, nothing else); SKID; AKID = the
       PAA's SKID; subject VendorID (and optional ProductID) as UTF8String of 4 uppercase hex
       digits under OIDs 1.3.6.1.4.1.37244.2.1/.2.2 (§6.2.2.2); signed by the PAA.
  PAA  self-signed CA, pathLenConstraint at most 1, keyCertSign; a VendorID in its subject
       must be the PAI's.
Both must be valid at the time of the check, and DACs issued then must not outlive the PAI.

The CSR (PKCS#10, RFC 2986) carries the subject a PAI needs and the PAI's public key, signed
through a `PaiSigner`, so the key may stay inside an HSM. Pure: no files, no tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from matterfab.errors import AttestationError, invalid
from matterfab.matter.attestation import (
    MAX_CERT_DER_LENGTH,
    MAX_SERIAL_OCTETS,
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    PaiSigner,
    matter_id_text,
    subject_matter_id,
)
from matterfab.matter.pki import check_pid, check_vid

PAI_PATH_LENGTH = 0  # §6.2.2.4: a PAI issues DACs only
PAA_MAX_PATH_LENGTH = 1
CSR_VERSION = b"\x02\x01\x00"  # INTEGER 0: PKCS#10 v1 (RFC 2986 §4.1)
_NO_ATTRIBUTES = b"\xa0\x00"  # [0] IMPLICIT SET OF Attribute, empty


def _key_usage_problems(cert: x509.Certificate, what: str) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return [f"{what} has no keyUsage extension (§6.2.2.4: critical keyCertSign, cRLSign)"]
    ku = ext.value
    problems = []
    if not ext.critical:
        problems.append(f"{what} keyUsage must be critical")
    if not (ku.key_cert_sign and ku.crl_sign):
        problems.append(f"{what} keyUsage must include keyCertSign and cRLSign")
    others = [
        name
        for name in ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
        if getattr(ku, name)
    ]
    if others:
        problems.append(f"{what} keyUsage must not include {', '.join(others)}")
    return problems


def _basic_constraints_problems(
    cert: x509.Certificate, what: str, path_length: int, *, exact: bool
) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return [f"{what} has no basicConstraints extension (must be critical CA:TRUE)"]
    if not ext.critical or not ext.value.ca:
        return [f"{what} basicConstraints must be critical with CA:TRUE"]
    found = ext.value.path_length
    if exact and found != path_length:
        return [f"{what} pathLenConstraint must be {path_length}, got {found}"]
    if found is not None and found > path_length:
        return [f"{what} pathLenConstraint must be at most {path_length}, got {found}"]
    return []


def _validity_problems(cert: x509.Certificate, what: str, now: datetime) -> list[str]:
    if now > cert.not_valid_after_utc:
        return [f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"]
    if now < cert.not_valid_before_utc:
        return [f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"]
    return []


def _format_problems(cert: x509.Certificate, what: str) -> list[str]:
    problems = []
    if cert.version != x509.Version.v3:
        problems.append(f"{what} must be an X.509 v3 certificate")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        problems.append(f"{what} key must be EC P-256 (prime256v1)")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        problems.append(f"{what} must be signed with ecdsa-with-SHA256")
    if len(cert.public_bytes(serialization.Encoding.DER)) > MAX_CERT_DER_LENGTH:
        problems.append(f"{what} DER must be at most {MAX_CERT_DER_LENGTH} octets")
    serial = cert.serial_number
    if serial <= 0 or (serial.bit_length() + 8) // 8 > MAX_SERIAL_OCTETS:
        problems.append(f"{what} serial must be positive and at most {MAX_SERIAL_OCTETS} octets")
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        problems.append(f"{what} has no subjectKeyIdentifier extension")
    return problems


def pai_problems(
    pai: x509.Certificate,
    *,
    vendor_id: int | None = None,
    product_id: int | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Every way `pai` breaks the Matter PAI profile (§6.2.2.4), on its own; [] when none.

    With `vendor_id`/`product_id`, the subject's VID must equal it and a PID in the subject
    must equal `product_id`.
    """
    moment = now or datetime.now(UTC)
    problems = _format_problems(pai, "PAI")
    problems += _basic_constraints_problems(pai, "PAI", PAI_PATH_LENGTH, exact=True)
    problems += _key_usage_problems(pai, "PAI")
    try:
        pai.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        problems.append("PAI has no authorityKeyIdentifier extension")
    try:
        vid = subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID")
        pid = subject_matter_id(pai.subject, PRODUCT_ID_OID, "PAI ProductID")
    except AttestationError as exc:
        problems.append(f"{exc} (§6.2.2.2)")
    else:
        if vid is None:
            problems.append("PAI subject must carry a Matter VendorID (OID 1.3.6.1.4.1.37244.2.1)")
        elif vendor_id is not None and vid != vendor_id:
            problems.append(f"PAI VendorID is 0x{vid:04X}, not 0x{vendor_id:04X}")
        if pid is not None and product_id is not None and pid != product_id:
            problems.append(f"PAI ProductID is 0x{pid:04X}, not 0x{product_id:04X}")
    problems += _validity_problems(pai, "PAI", moment)
    return problems


def paa_problems(paa: x509.Certificate, *, now: datetime | None = None) -> list[str]:
    """Every way `paa` breaks the PAA profile (§6.2.2.5) as far as issuing PAIs goes."""
    moment = now or datetime.now(UTC)
    problems = _format_problems(paa, "PAA")
    problems += _basic_constraints_problems(paa, "PAA", PAA_MAX_PATH_LENGTH, exact=False)
    problems += _key_usage_problems(paa, "PAA")
    if paa.issuer != paa.subject:
        problems.append("PAA must be self-signed (issuer equal to subject)")
    try:
        subject_matter_id(paa.subject, VENDOR_ID_OID, "PAA VendorID")
    except AttestationError as exc:
        problems.append(str(exc))
    problems += _validity_problems(paa, "PAA", moment)
    return problems


def chain_problem(pai: x509.Certificate, paa: x509.Certificate) -> str | None:
    """Why `pai` is not issued by `paa` (issuer name, key identifier, signature, VID), or None.

    Only the link is checked here; each certificate's own profile is `pai_problems` /
    `paa_problems`, so one fault is reported once.
    """
    if pai.issuer != paa.subject:
        return "PAI issuer does not match the PAA's subject"
    try:
        akid = pai.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        skid = paa.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None  # reported by pai_problems / paa_problems
    if akid.key_identifier != skid.digest:
        return "PAI authorityKeyIdentifier is not the PAA's subjectKeyIdentifier"
    try:
        pai.verify_directly_issued_by(paa)
    except (InvalidSignature, ValueError, TypeError):
        return "PAI signature does not verify with the PAA's public key"
    try:
        paa_vid = subject_matter_id(paa.subject, VENDOR_ID_OID, "PAA VendorID")
        pai_vid = subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID")
    except AttestationError:
        return None  # reported by pai_problems / paa_problems
    if paa_vid is not None and pai_vid is not None and paa_vid != pai_vid:
        return f"PAI VendorID 0x{pai_vid:04X} differs from the PAA's 0x{paa_vid:04X}"
    return None


def dac_validity_problem(
    pai: x509.Certificate, dac_validity_days: int | None, now: datetime | None = None
) -> str | None:
    """Why DACs issued now for `dac_validity_days` would outlive the PAI; None when they fit."""
    if dac_validity_days is None:
        return None
    moment = now or datetime.now(UTC)
    if dac_validity_days < 1:
        return f"must be at least 1, got {dac_validity_days}"
    left = pai.not_valid_after_utc - moment
    if moment + timedelta(days=dac_validity_days) > pai.not_valid_after_utc:
        return (
            f"{dac_validity_days} days would outlive the PAI (valid until "
            f"{pai.not_valid_after_utc:%Y-%m-%d}): use at most {max(left.days, 0)}, "
            "or omit it to end every DAC with the PAI"
        )
    return None


def key_matches(signer: PaiSigner, pai: x509.Certificate) -> bool:
    """Whether `signer` holds the PAI's key: a test signature verified with the certificate."""
    digest = hashlib.sha256(b"matterfab PAI key check " + secrets.token_bytes(32))
    signature = signer.sign_digest(digest.digest())
    public = pai.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, digest.digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def pai_subject(vendor_id: int, product_id: int | None, common_name: str) -> x509.Name:
    """CN, then the Matter VendorID (and ProductID) as UTF8String (§6.2.2.2)."""
    check_vid(vendor_id)
    if product_id is not None:
        check_pid(product_id)
    if not 1 <= len(common_name) <= 64:
        raise invalid("common_name", f"must be 1..64 characters, got {len(common_name)}")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attrs.append(x509.NameAttribute(VENDOR_ID_OID, matter_id_text(vendor_id)))
    if product_id is not None:
        attrs.append(x509.NameAttribute(PRODUCT_ID_OID, matter_id_text(product_id)))
    return x509.Name(attrs)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def build_csr(
    signer: PaiSigner, vendor_id: int, product_id: int | None, common_name: str
) -> x509.CertificateSigningRequest:
    """A PKCS#10 CSR for a PAI: Matter subject, the signer's P-256 key, signed by that key.

    CertificationRequestInfo is assembled here (version 0, subject, SubjectPublicKeyInfo, no
    attributes) so that any PaiSigner, an HSM key included, can sign its SHA-256 digest.
    """
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise invalid("key_source", "the PAI key must be EC P-256")
    subject = pai_subject(vendor_id, product_id, common_name).public_bytes()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = _der(0x30, CSR_VERSION + subject + spki + _NO_ATTRIBUTES)
    signature = signer.sign_digest(hashlib.sha256(info).digest())
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256, no parameters
    der = _der(0x30, info + algorithm + _der(0x03, b"\x00" + signature))
    csr = x509.load_der_x509_csr(der)
    if not csr.is_signature_valid:
        raise AttestationError("the key source made a CSR signature that does not verify")
    return csr
