"""Device Attestation Certificates: issuance and verification (Matter Core §6.2.2).

A DAC is an X.509 v3 certificate with a P-256 key, signed ecdsa-with-SHA256 by the Product
Attestation Intermediate (PAI). Its profile (§6.2.2.3, DESIGN §6):
  subject  optional CN, then VendorID and ProductID as UTF8String of 4 uppercase hex digits
           under OIDs 1.3.6.1.4.1.37244.2.1 and 1.3.6.1.4.1.37244.2.2 (§6.2.2.2);
  issuer   the PAI subject; AKID = the PAI's SKID; SKID present;
  basicConstraints CA:FALSE critical; keyUsage digitalSignature only, critical;
  serial   positive, at most 20 octets (RFC 5280 §4.1.2.2); DER at most 600 octets (§6.2.2).
Every DAC is verified against its PAI before `issue_dac` returns it.

Signing goes through `PaiSigner`, so the PAI key can live in a file or in an HSM. Keys that
cryptography holds in memory take the fast path (`CertificateBuilder.sign`); others sign the
SHA-256 of the TBSCertificate and the certificate DER is assembled here (RFC 5280 §4.1).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from matterfab.errors import AttestationError, invalid

# §6.2.2.2: Matter DN attribute OIDs (CSA private enterprise number 37244).
VENDOR_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.1")
PRODUCT_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.2")
MAX_SERIAL_OCTETS = 20  # RFC 5280 §4.1.2.2
MAX_CERT_DER_LENGTH = 600  # §6.2.2: kMaxDERCertLength in the Matter SDK
# DER AlgorithmIdentifier for ecdsa-with-SHA256 (RFC 5758 §3.2: parameters absent).
_ECDSA_SHA256_ALGID = bytes.fromhex("300a06082a8648ce3d040302")


@runtime_checkable
class PaiSigner(Protocol):
    """What DAC issuance needs from a PAI key, whether it lives in a file or an HSM."""

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The PAI's public key (must match the PAI certificate)."""
        ...

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA P-256 over a 32-octet SHA-256 digest; DER-encoded Ecdsa-Sig-Value."""
        ...


class InMemorySigner:
    """A PaiSigner over a cryptography P-256 private key (also the fast signing path)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise invalid("pai_key", "must be an EC P-256 (secp256r1) private key")
        self.private_key = private_key
        self._public_key = private_key.public_key()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the wrapped key."""
        return self._public_key

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA-sign a precomputed SHA-256 digest."""
        return self.private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    def __repr__(self) -> str:
        return "InMemorySigner(<P-256 key>)"


@dataclass(frozen=True)
class IssuedDac:
    """A freshly issued DAC with its key pair.

    `private_key_der` is PKCS#8 DER (RFC 5958, `openssl pkey -outform DER`);
    `private_key_raw` is the 32-octet private scalar esp-matter stores as `dac-key`;
    `public_key_raw` is the 65-octet uncompressed point stored as `dac-pub-key`.
    """

    certificate: x509.Certificate
    der: bytes
    private_key_der: bytes = field(repr=False)
    private_key_raw: bytes = field(repr=False)
    public_key_raw: bytes
    serial_hex: str


def serial_hex(serial: int) -> str:
    """Lowercase hex of a certificate serial, even length: the DAC ledger key (DESIGN §4)."""
    text = f"{serial:x}"
    return text if len(text) % 2 == 0 else "0" + text


def matter_id_text(value: int) -> str:
    """A VID/PID as the DN attribute value: 4 uppercase hex digits (§6.2.2.2)."""
    return f"{value:04X}"


def _check_id(field_name: str, value: int, *, low: int = 1, high: int = 0xFFFF) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(field_name, f"must be an integer 0x{low:04X}..0x{high:04X}, got {value!r}")


def _utc(moment: datetime) -> datetime:
    # Naive datetimes are taken as UTC, the only zone certificates know.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _key_id(cert: x509.Certificate, what: str) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound as exc:
        raise AttestationError(f"{what} has no subjectKeyIdentifier") from exc


@dataclass(frozen=True)
class _IssuerFacts:
    key_id: bytes
    vendor_id: int | None
    product_id: int | None


@lru_cache(maxsize=64)
def _issuer_facts(pai: x509.Certificate) -> _IssuerFacts:
    # A signer issues many DACs under one PAI: read its extensions and subject once.
    return _IssuerFacts(
        key_id=_key_id(pai, "PAI certificate"),
        vendor_id=subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID"),
        product_id=subject_matter_id(pai.subject, PRODUCT_ID_OID, "PAI ProductID"),
    )


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _assemble_certificate(tbs: bytes, signature: bytes) -> bytes:
    """DER of Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }."""
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + _ECDSA_SHA256_ALGID + bit_string
    return b"\x30" + _der_length(len(body)) + body


# Any P-256 key yields the same TBSCertificate bytes (the signature algorithm is fixed), so a
# throwaway key lets cryptography build the TBS for signers whose key we cannot hold.
_TBS_KEY = ec.generate_private_key(ec.SECP256R1())


def issue_dac(
    *,
    pai_cert: x509.Certificate,
    signer: PaiSigner,
    vendor_id: int,
    product_id: int,
    not_before: datetime,
    not_after: datetime | None,
    serial: int | None = None,
    common_name: str | None = None,
) -> IssuedDac:
    """Generate a P-256 key and issue its DAC under `pai_cert`, verified before it is returned.

    Validity is clamped inside the PAI's: notAfter None means the PAI's notAfter. `serial`
    defaults to 159 random bits (positive, at most 20 octets).
    """
    _check_id("vendor_id", vendor_id, high=0xFFF4)
    _check_id("product_id", product_id)
    if serial is None:
        serial = secrets.randbits(159) or 1
    elif serial <= 0 or (serial.bit_length() + 8) // 8 > MAX_SERIAL_OCTETS:
        raise invalid("dac_serial", "must be positive and fit in 20 DER octets")
    start, end = _dac_window(pai_cert, not_before, not_after)

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert, der = _sign_dac(
        public, pai_cert, signer, vendor_id, product_id, start, end, serial, common_name
    )
    return IssuedDac(
        certificate=cert,
        der=der,
        private_key_der=key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private_key_raw=key.private_numbers().private_value.to_bytes(32, "big"),
        public_key_raw=public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ),
        serial_hex=serial_hex(serial),
    )


def _dac_window(
    pai_cert: x509.Certificate, not_before: datetime, not_after: datetime | None
) -> tuple[datetime, datetime]:
    """A DAC's validity clamped inside the PAI's (notAfter None: the PAI's notAfter)."""
    start = max(_utc(not_before), pai_cert.not_valid_before_utc)
    end = pai_cert.not_valid_after_utc if not_after is None else _utc(not_after)
    end = min(end, pai_cert.not_valid_after_utc)
    if end <= start:
        raise AttestationError(
            f"DAC validity is empty inside the PAI's ({pai_cert.not_valid_before_utc:%Y-%m-%d}"
            f"..{pai_cert.not_valid_after_utc:%Y-%m-%d}); the PAI may have expired"
        )
    return start, end


def _sign_dac(
    public: ec.EllipticCurvePublicKey,
    pai_cert: x509.Certificate,
    signer: PaiSigner,
    vendor_id: int,
    product_id: int,
    start: datetime,
    end: datetime,
    serial: int,
    common_name: str | None,
) -> tuple[x509.Certificate, bytes]:
    """The DAC over `public` signed by the PAI key (in memory or through an HSM), verified."""
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    names.append(x509.NameAttribute(VENDOR_ID_OID, matter_id_text(vendor_id)))
    names.append(x509.NameAttribute(PRODUCT_ID_OID, matter_id_text(product_id)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(pai_cert.subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(DIGITAL_SIGNATURE_ONLY, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(_issuer_facts(pai_cert).key_id, None, None),
            critical=False,
        )
    )
    if isinstance(signer, InMemorySigner):
        cert = builder.sign(signer.private_key, hashes.SHA256())
        der = cert.public_bytes(serialization.Encoding.DER)
    else:
        tbs = builder.sign(_TBS_KEY, hashes.SHA256()).tbs_certificate_bytes
        signature = signer.sign_digest(hashlib.sha256(tbs).digest())
        der = _assemble_certificate(tbs, signature)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise AttestationError(f"PAI signer returned a malformed signature ({exc})") from exc
    verify_dac(cert, pai_cert, vendor_id=vendor_id, product_id=product_id)
    return cert, der


def issue_dac_over(
    public_key: ec.EllipticCurvePublicKey,
    *,
    pai_cert: x509.Certificate,
    signer: PaiSigner,
    vendor_id: int,
    product_id: int,
    not_before: datetime,
    not_after: datetime | None,
    serial: int,
    common_name: str | None = None,
) -> x509.Certificate:
    """Issue a DAC over a key held elsewhere (a device-born key, `matter.csr`), by the same
    profile rules as `issue_dac`, verified against the PAI before it is returned."""
    _check_id("vendor_id", vendor_id, high=0xFFF4)
    _check_id("product_id", product_id)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise invalid("csr", "key must be EC P-256 (secp256r1)")
    if serial <= 0 or (serial.bit_length() + 8) // 8 > MAX_SERIAL_OCTETS:
        raise invalid("dac_serial", "must be positive and fit in 20 DER octets")
    start, end = _dac_window(pai_cert, not_before, not_after)
    cert, _ = _sign_dac(
        public_key, pai_cert, signer, vendor_id, product_id, start, end, serial, common_name
    )
    return cert


# keyUsage of a DAC (and of our CD signing certificate): digitalSignature alone.
DIGITAL_SIGNATURE_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def subject_matter_id(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> int | None:
    """The VID or PID in a subject (§6.2.2.2), None when absent; malformed values raise."""
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    if len(attrs) > 1:
        raise AttestationError(f"{what} appears more than once in the subject")
    attr = attrs[0]
    # cryptography reports the ASN.1 string type it parsed: Matter requires UTF8String.
    if attr._type.name != "UTF8String":
        raise AttestationError(f"{what} must be a UTF8String, got {attr._type.name}")
    value = attr.value
    if not isinstance(value, str) or len(value) != 4 or value != value.upper():
        raise AttestationError(f"{what} must be 4 uppercase hex digits, got {value!r}")
    try:
        return int(value, 16)
    except ValueError as exc:
        raise AttestationError(f"{what} must be 4 uppercase hex digits, got {value!r}") from exc


def _extension(cert: x509.Certificate, kind: type, what: str) -> x509.Extension:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound as exc:
        raise AttestationError(f"{what} has no {kind.__name__} extension") from exc


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise AttestationError(f"{what} must be signed with ecdsa-with-SHA256")
    if cert.issuer != issuer.subject:
        raise AttestationError(f"{what} issuer does not match its issuer certificate's subject")
    aki = _extension(cert, x509.AuthorityKeyIdentifier, what).value
    if aki.key_identifier != _issuer_facts(issuer).key_id:
        raise AttestationError(f"{what} authorityKeyIdentifier does not match the issuer's SKID")
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise AttestationError(f"{what} signature does not verify with its issuer's key") from exc


def _check_p256(cert: x509.Certificate, what: str) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError(f"{what} key must be EC P-256")


def verify_dac(
    dac: x509.Certificate,
    pai: x509.Certificate,
    *,
    vendor_id: int | None = None,
    product_id: int | None = None,
) -> None:
    """Check a DAC's profile and signature against its PAI; raise AttestationError why not."""
    if dac.version != x509.Version.v3:
        raise AttestationError("DAC must be an X.509 v3 certificate")
    if len(dac.public_bytes(serialization.Encoding.DER)) > MAX_CERT_DER_LENGTH:
        raise AttestationError(f"DAC DER is longer than {MAX_CERT_DER_LENGTH} octets")
    if dac.serial_number <= 0 or (dac.serial_number.bit_length() + 8) // 8 > MAX_SERIAL_OCTETS:
        raise AttestationError("DAC serial must be positive and at most 20 octets")
    _check_p256(dac, "DAC")
    _check_signed_by(dac, pai, "DAC")
    bc = _extension(dac, x509.BasicConstraints, "DAC")
    if not bc.critical or bc.value.ca:
        raise AttestationError("DAC basicConstraints must be critical with CA:FALSE")
    ku = _extension(dac, x509.KeyUsage, "DAC")
    if not ku.critical or ku.value != DIGITAL_SIGNATURE_ONLY:
        raise AttestationError("DAC keyUsage must be critical and digitalSignature only")
    _extension(dac, x509.SubjectKeyIdentifier, "DAC")
    if not pai.not_valid_before_utc <= dac.not_valid_before_utc <= pai.not_valid_after_utc:
        raise AttestationError("DAC notBefore must lie within the PAI's validity")
    if dac.not_valid_after_utc <= dac.not_valid_before_utc:
        raise AttestationError("DAC notAfter must be after its notBefore")
    vid = subject_matter_id(dac.subject, VENDOR_ID_OID, "DAC VendorID")
    pid = subject_matter_id(dac.subject, PRODUCT_ID_OID, "DAC ProductID")
    if vid is None or pid is None:
        raise AttestationError("DAC subject must carry both VendorID and ProductID")
    if vendor_id is not None and vid != vendor_id:
        raise AttestationError(f"DAC VendorID is 0x{vid:04X}, expected 0x{vendor_id:04X}")
    if product_id is not None and pid != product_id:
        raise AttestationError(f"DAC ProductID is 0x{pid:04X}, expected 0x{product_id:04X}")
    # §6.2.2.3: a VID (or PID) in the PAI subject constrains the DACs it issues.
    facts = _issuer_facts(pai)
    pai_vid, pai_pid = facts.vendor_id, facts.product_id
    if pai_vid is not None and pai_vid != vid:
        raise AttestationError(f"DAC VendorID 0x{vid:04X} differs from the PAI's 0x{pai_vid:04X}")
    if pai_pid is not None and pai_pid != pid:
        raise AttestationError(f"DAC ProductID 0x{pid:04X} differs from the PAI's 0x{pai_pid:04X}")


def _verify_ca(cert: x509.Certificate, what: str, path_length: int) -> None:
    _check_p256(cert, what)
    bc = _extension(cert, x509.BasicConstraints, what)
    if not bc.critical or not bc.value.ca:
        raise AttestationError(f"{what} basicConstraints must be critical with CA:TRUE")
    if bc.value.path_length is not None and bc.value.path_length > path_length:
        raise AttestationError(f"{what} pathLenConstraint must be at most {path_length}")
    ku = _extension(cert, x509.KeyUsage, what)
    if not ku.critical or not ku.value.key_cert_sign:
        raise AttestationError(f"{what} keyUsage must be critical with keyCertSign")


def verify_pai(pai: x509.Certificate, paa: x509.Certificate) -> None:
    """Check a PAI's CA profile (§6.2.2.4) and its signature by the PAA."""
    _verify_ca(pai, "PAI", path_length=0)
    _verify_ca(paa, "PAA", path_length=1)
    _check_signed_by(pai, paa, "PAI")
    paa_vid = subject_matter_id(paa.subject, VENDOR_ID_OID, "PAA VendorID")
    pai_vid = subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID")
    if pai_vid is None:
        raise AttestationError("PAI subject must carry a VendorID")
    if paa_vid is not None and paa_vid != pai_vid:
        raise AttestationError(f"PAI VendorID 0x{pai_vid:04X} differs from the PAA's")


def verify_chain(dac: x509.Certificate, pai: x509.Certificate, paa: x509.Certificate) -> None:
    """Verify DAC → PAI → PAA: profiles, key identifiers and signatures."""
    verify_pai(pai, paa)
    verify_dac(dac, pai)


def dac_validity(
    not_before: datetime, validity_days: int | None
) -> tuple[datetime, datetime | None]:
    """(notBefore, notAfter) for `issue_dac` from a start and a validity in days (None: PAI's)."""
    start = _utc(not_before)
    return start, None if validity_days is None else start + timedelta(days=validity_days)
