"""Certification Declaration: TLV content and CMS SignedData envelope (Matter Core §6.3).

The content (§6.3.1) is an anonymous TLV structure with context tags:
  0 format_version u16, 1 vendor_id u16, 2 product_id_array [1..100] of u16,
  3 device_type_id u32, 4 certificate_id string (19 chars), 5 security_level u8,
  6 security_information u16, 7 version_number u16, 8 certification_type u8
  (0 development and test, 1 provisional, 2 official), 9 dac_origin_vendor_id u16 (optional),
  10 dac_origin_product_id u16 (optional), 11 authorized_paa_list [1..10] of 20-octet key IDs
  (optional).

The envelope (§6.3.2) is CMS SignedData (RFC 5652) version 3: digestAlgorithms {sha256},
encapContentInfo id-data carrying the TLV, no certificates, one SignerInfo identified by the
signing certificate's subjectKeyIdentifier, sha256, ecdsa-with-SHA256, no signed attributes:
so the signature is ECDSA-SHA256 over the TLV bytes themselves (RFC 5652 §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError, InvalidInput, invalid
from matterfab.matter import tlv
from matterfab.matter.tlv import MISSING, Array, Structure, UInt

FIELD = "certification_declaration"
CERTIFICATE_ID_LENGTH = 19  # §6.3.1: certificate_id is exactly 19 characters
MAX_PRODUCT_IDS = 100
MAX_AUTHORIZED_PAAS = 10
KEY_ID_LENGTH = 20  # SHA-1 sized subject key identifier

# Context tags of the content structure, §6.3.1.
_TAG_FORMAT_VERSION = 0
_TAG_VENDOR_ID = 1
_TAG_PRODUCT_ID_ARRAY = 2
_TAG_DEVICE_TYPE_ID = 3
_TAG_CERTIFICATE_ID = 4
_TAG_SECURITY_LEVEL = 5
_TAG_SECURITY_INFORMATION = 6
_TAG_VERSION_NUMBER = 7
_TAG_CERTIFICATION_TYPE = 8
_TAG_DAC_ORIGIN_VENDOR_ID = 9
_TAG_DAC_ORIGIN_PRODUCT_ID = 10
_TAG_AUTHORIZED_PAA_LIST = 11

_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFFFFFF


@dataclass(frozen=True)
class CdContent:
    """The fields of a Certification Declaration (§6.3.1), in tag order."""

    vendor_id: int
    product_id_array: list[int]
    device_type_id: int
    certificate_id: str
    version_number: int
    format_version: int = 1
    security_level: int = 0
    security_information: int = 0
    certification_type: int = 0  # 0: development and test (what test profiles sign)
    dac_origin_vendor_id: int | None = None
    dac_origin_product_id: int | None = None
    authorized_paa_list: list[bytes] = field(default_factory=list)


def _check_range(name: str, value: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise invalid(f"{FIELD}.{name}", f"must be an integer 0..0x{high:X}, got {value!r}")


def _validate(c: CdContent) -> None:
    _check_range("format_version", c.format_version, _U16)
    _check_range("vendor_id", c.vendor_id, _U16)
    if not 1 <= len(c.product_id_array) <= MAX_PRODUCT_IDS:
        raise invalid(f"{FIELD}.product_id_array", f"must hold 1..{MAX_PRODUCT_IDS} product IDs")
    for pid in c.product_id_array:
        _check_range("product_id_array", pid, _U16)
    _check_range("device_type_id", c.device_type_id, _U32)
    if len(c.certificate_id) != CERTIFICATE_ID_LENGTH:
        raise invalid(
            f"{FIELD}.certificate_id",
            f"must be exactly {CERTIFICATE_ID_LENGTH} characters, got {len(c.certificate_id)}",
        )
    _check_range("security_level", c.security_level, _U8)
    _check_range("security_information", c.security_information, _U16)
    _check_range("version_number", c.version_number, _U16)
    _check_range("certification_type", c.certification_type, 2)
    # §6.3.1: the two dac_origin fields appear together or not at all.
    if (c.dac_origin_vendor_id is None) != (c.dac_origin_product_id is None):
        raise invalid(f"{FIELD}.dac_origin_vendor_id", "and dac_origin_product_id go together")
    if c.dac_origin_vendor_id is not None:
        _check_range("dac_origin_vendor_id", c.dac_origin_vendor_id, _U16)
    if c.dac_origin_product_id is not None:
        _check_range("dac_origin_product_id", c.dac_origin_product_id, _U16)
    if len(c.authorized_paa_list) > MAX_AUTHORIZED_PAAS:
        raise invalid(f"{FIELD}.authorized_paa_list", f"must hold at most {MAX_AUTHORIZED_PAAS}")
    for key_id in c.authorized_paa_list:
        if len(key_id) != KEY_ID_LENGTH:
            raise invalid(f"{FIELD}.authorized_paa_list", "entries must be 20-octet key IDs")


def encode_cd_content(c: CdContent) -> bytes:
    """Encode the CD content as the anonymous TLV structure of §6.3.1 (validated first)."""
    _validate(c)
    members: list[tuple[int | None, tlv.Value]] = [
        (_TAG_FORMAT_VERSION, UInt(c.format_version)),
        (_TAG_VENDOR_ID, UInt(c.vendor_id)),
        (_TAG_PRODUCT_ID_ARRAY, Array(tuple(UInt(p) for p in c.product_id_array))),
        (_TAG_DEVICE_TYPE_ID, UInt(c.device_type_id)),
        (_TAG_CERTIFICATE_ID, c.certificate_id),
        (_TAG_SECURITY_LEVEL, UInt(c.security_level)),
        (_TAG_SECURITY_INFORMATION, UInt(c.security_information)),
        (_TAG_VERSION_NUMBER, UInt(c.version_number)),
        (_TAG_CERTIFICATION_TYPE, UInt(c.certification_type)),
    ]
    if c.dac_origin_vendor_id is not None and c.dac_origin_product_id is not None:
        members.append((_TAG_DAC_ORIGIN_VENDOR_ID, UInt(c.dac_origin_vendor_id)))
        members.append((_TAG_DAC_ORIGIN_PRODUCT_ID, UInt(c.dac_origin_product_id)))
    if c.authorized_paa_list:
        members.append((_TAG_AUTHORIZED_PAA_LIST, Array(tuple(c.authorized_paa_list))))
    return tlv.encode(Structure(tuple(members)))


def _uint(s: Structure, tag: int, name: str, *, optional: bool = False) -> int | None:
    value = s.get(tag)
    if value is MISSING and optional:
        return None
    if not isinstance(value, UInt):
        raise invalid(f"{FIELD}.{name}", f"must be an unsigned integer (context tag {tag})")
    return value.value


def _required_uint(s: Structure, tag: int, name: str) -> int:
    value = _uint(s, tag, name)
    assert value is not None  # _uint raises for a missing required member
    return value


def decode_cd_content(data: bytes) -> CdContent:
    """Decode and validate the TLV content of a CD (§6.3.1)."""
    root = tlv.decode(data)
    if not isinstance(root, Structure):
        raise invalid(FIELD, "content must be an anonymous TLV structure")
    pids = root.get(_TAG_PRODUCT_ID_ARRAY)
    if not isinstance(pids, Array) or not all(isinstance(p, UInt) for p in pids.items):
        raise invalid(f"{FIELD}.product_id_array", "must be an array of unsigned integers")
    cert_id = root.get(_TAG_CERTIFICATE_ID)
    if not isinstance(cert_id, str):
        raise invalid(f"{FIELD}.certificate_id", "must be a UTF-8 string (context tag 4)")
    paas = root.get(_TAG_AUTHORIZED_PAA_LIST)
    paa_list: list[bytes] = []
    if paas is not MISSING:
        if not isinstance(paas, Array) or not all(isinstance(k, bytes) for k in paas.items):
            raise invalid(f"{FIELD}.authorized_paa_list", "must be an array of octet strings")
        paa_list = [k for k in paas.items if isinstance(k, bytes)]
    content = CdContent(
        format_version=_required_uint(root, _TAG_FORMAT_VERSION, "format_version"),
        vendor_id=_required_uint(root, _TAG_VENDOR_ID, "vendor_id"),
        product_id_array=[p.value for p in pids.items if isinstance(p, UInt)],
        device_type_id=_required_uint(root, _TAG_DEVICE_TYPE_ID, "device_type_id"),
        certificate_id=cert_id,
        security_level=_required_uint(root, _TAG_SECURITY_LEVEL, "security_level"),
        security_information=_required_uint(
            root, _TAG_SECURITY_INFORMATION, "security_information"
        ),
        version_number=_required_uint(root, _TAG_VERSION_NUMBER, "version_number"),
        certification_type=_required_uint(root, _TAG_CERTIFICATION_TYPE, "certification_type"),
        dac_origin_vendor_id=_uint(
            root, _TAG_DAC_ORIGIN_VENDOR_ID, "dac_origin_vendor_id", optional=True
        ),
        dac_origin_product_id=_uint(
            root, _TAG_DAC_ORIGIN_PRODUCT_ID, "dac_origin_product_id", optional=True
        ),
        authorized_paa_list=paa_list,
    )
    _validate(content)
    return content


def _subject_key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound as exc:
        raise AttestationError(
            "CD signing certificate has no subjectKeyIdentifier "
            "(§6.3.2 identifies the signer by it)"
        ) from exc


def sign_cd(
    content: CdContent, signing_cert: x509.Certificate, signing_key: ec.EllipticCurvePrivateKey
) -> bytes:
    """Encode `content` and wrap it in the §6.3.2 CMS SignedData envelope, as DER."""
    if signing_key.public_key() != signing_cert.public_key():
        raise AttestationError("CD signing key does not match the CD signing certificate")
    payload = encode_cd_content(content)
    signature = signing_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return _assemble(payload, _subject_key_id(signing_cert), signature)


def _assemble(payload: bytes, key_id: bytes, signature: bytes) -> bytes:
    """The §6.3.2 envelope around already-signed content (split out for known-answer tests)."""
    # parameters=None writes the AlgorithmIdentifier without parameters, as the SDK's CDs do;
    # asn1crypto would otherwise add an explicit NULL.
    sha256 = {"algorithm": "sha256", "parameters": None}
    signer_info = cms.SignerInfo(
        {
            "version": "v3",
            "sid": cms.SignerIdentifier(name="subject_key_identifier", value=key_id),
            "digest_algorithm": sha256,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [sha256],
            "encap_content_info": {"content_type": "data", "content": payload},
            "signer_infos": [signer_info],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


@dataclass(frozen=True)
class _Envelope:
    payload: bytes
    signer_key_id: bytes
    signature: bytes


def _open_envelope(der: bytes) -> _Envelope:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise invalid(FIELD, "must be a CMS SignedData (§6.3.2)")
        sd = info["content"]
        encap = sd["encap_content_info"]
        if encap["content_type"].native != "data":
            raise invalid(FIELD, "encapsulated content type must be id-data (§6.3.2)")
        payload = encap["content"].native
        signers = sd["signer_infos"]
        if not isinstance(payload, bytes) or len(signers) != 1:
            raise invalid(FIELD, "must carry TLV content and exactly one SignerInfo (§6.3.2)")
        si = signers[0]
        if si["sid"].name != "subject_key_identifier":
            raise invalid(FIELD, "SignerInfo must name its key by subjectKeyIdentifier (§6.3.2)")
        if si["digest_algorithm"]["algorithm"].native != "sha256":
            raise invalid(FIELD, "digest algorithm must be sha256 (§6.3.2)")
        if si["signature_algorithm"]["algorithm"].native != "sha256_ecdsa":
            raise invalid(FIELD, "signature algorithm must be ecdsa-with-SHA256 (§6.3.2)")
        if si["signed_attrs"].native is not None:
            raise invalid(FIELD, "signed attributes are not allowed (§6.3.2)")
        return _Envelope(payload, si["sid"].chosen.native, si["signature"].native)
    except InvalidInput:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        # asn1crypto parses lazily and reports malformed DER as ValueError/TypeError.
        raise invalid(FIELD, f"is not valid CMS DER ({exc})") from exc


def parse_cd(der: bytes) -> CdContent:
    """Decode a CD's envelope and content without checking its signature."""
    return decode_cd_content(_open_envelope(der).payload)


def cd_signer_key_id(der: bytes) -> bytes:
    """The subjectKeyIdentifier that names the key which signed the CD."""
    return _open_envelope(der).signer_key_id


def verify_cd(der: bytes, signing_cert: x509.Certificate) -> CdContent:
    """Check the CD's signer key ID and signature against `signing_cert`; return its content."""
    env = _open_envelope(der)
    if env.signer_key_id != _subject_key_id(signing_cert):
        raise AttestationError(
            f"CD was signed by key {env.signer_key_id.hex()}, not by the given certificate's "
            f"key {_subject_key_id(signing_cert).hex()}"
        )
    public_key = signing_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AttestationError("CD signing certificate must hold an EC P-256 key")
    try:
        public_key.verify(env.signature, env.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AttestationError("CD signature does not verify with the signing certificate") from exc
    return decode_cd_content(env.payload)
