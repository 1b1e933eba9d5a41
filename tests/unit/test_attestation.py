"""DAC issuance and verification: the Matter DAC profile, both signing paths, typed errors."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, pki
from matterfab.matter.attestation import (
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    InMemorySigner,
    PaiSigner,
    issue_dac,
    verify_chain,
    verify_dac,
)
from tests.vectors_path import vectors_dir

NOW = datetime(2030, 1, 1, tzinfo=UTC)
VID, PID = 0xFFF1, 0x8000


class DigestOnlySigner:
    """A signer that, like an HSM, never hands its key to cryptography's builder."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._inner = InMemorySigner(key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    def sign_digest(self, digest: bytes) -> bytes:
        return self._inner.sign_digest(digest)


@pytest.fixture(scope="module")
def chain() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    paa, paa_key = pki.make_paa(vendor_id=VID, now=NOW - timedelta(days=1))
    pai, pai_key = pki.make_pai(paa, paa_key, VID, now=NOW - timedelta(days=1))
    return paa, pai, pai_key


def _issue(chain: tuple, signer: PaiSigner | None = None, **kw: object) -> attestation.IssuedDac:
    _, pai, pai_key = chain
    args: dict = {
        "pai_cert": pai,
        "signer": signer or InMemorySigner(pai_key),
        "vendor_id": VID,
        "product_id": PID,
        "not_before": NOW,
        "not_after": None,
    }
    args.update(kw)
    return issue_dac(**args)


@pytest.mark.parametrize("signer_kind", ["in_memory", "digest_only"])
def test_dac_profile(chain: tuple, signer_kind: str) -> None:
    paa, pai, pai_key = chain
    signer = InMemorySigner(pai_key) if signer_kind == "in_memory" else DigestOnlySigner(pai_key)
    dac = _issue(chain, signer, common_name="Matter DAC 1")
    cert = dac.certificate
    verify_chain(cert, pai, paa)
    assert cert.version == x509.Version.v3
    assert cert.signature_hash_algorithm is not None
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # Subject order and types as in the SDK's DACs: CN, VID, PID, all UTF8String.
    oids = [attr.oid for attr in cert.subject]
    assert oids[1:] == [VENDOR_ID_OID, PRODUCT_ID_OID]
    assert cert.subject.get_attributes_for_oid(VENDOR_ID_OID)[0].value == "FFF1"
    assert cert.subject.get_attributes_for_oid(PRODUCT_ID_OID)[0].value == "8000"
    assert cert.issuer == pai.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    akid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert akid.key_identifier == pai_skid.digest
    assert 0 < cert.serial_number < 1 << 159
    assert dac.serial_hex == f"{cert.serial_number:x}".rjust(len(dac.serial_hex), "0")
    assert dac.der == cert.public_bytes(serialization.Encoding.DER)
    assert len(dac.der) <= 600


def test_key_encodings(chain: tuple) -> None:
    dac = _issue(chain)
    key = serialization.load_der_private_key(dac.private_key_der, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.private_numbers().private_value.to_bytes(32, "big") == dac.private_key_raw
    assert len(dac.public_key_raw) == 65 and dac.public_key_raw[0] == 0x04
    assert ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), dac.public_key_raw) == (
        dac.certificate.public_key()
    )
    assert key.public_key() == dac.certificate.public_key()
    assert "private_key_raw" not in repr(dac)


def test_serials_are_unique(chain: tuple) -> None:
    serials = {_issue(chain).serial_hex for _ in range(200)}
    assert len(serials) == 200


def test_given_serial_and_bounds(chain: tuple) -> None:
    assert _issue(chain, serial=0x0102).serial_hex == "0102"
    with pytest.raises(InvalidInput) as info:
        _issue(chain, serial=0)
    assert info.value.field == "dac_serial"
    with pytest.raises(InvalidInput):
        _issue(chain, serial=1 << 159)  # 160 bits: a 21st octet for the sign


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"vendor_id": 0}, "vendor_id"),
        ({"vendor_id": 0xFFF5}, "vendor_id"),
        ({"product_id": 0}, "product_id"),
        ({"product_id": 0x10000}, "product_id"),
    ],
)
def test_invalid_ids(chain: tuple, kw: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _issue(chain, **kw)
    assert info.value.field == field


def test_validity_is_clamped_inside_the_pai(chain: tuple) -> None:
    _, pai, _ = chain
    early = _issue(chain, not_before=pai.not_valid_before_utc - timedelta(days=30))
    assert early.certificate.not_valid_before_utc == pai.not_valid_before_utc
    assert early.certificate.not_valid_after_utc == pai.not_valid_after_utc
    late = _issue(chain, not_after=pai.not_valid_after_utc + timedelta(days=30))
    assert late.certificate.not_valid_after_utc == pai.not_valid_after_utc
    short = _issue(chain, not_after=NOW + timedelta(days=365))
    assert short.certificate.not_valid_after_utc == NOW + timedelta(days=365)
    naive = _issue(chain, not_before=NOW.replace(tzinfo=None))
    assert naive.certificate.not_valid_before_utc == NOW


def test_expired_pai_refuses(chain: tuple) -> None:
    _, pai, _ = chain
    with pytest.raises(AttestationError, match="PAI may have expired"):
        _issue(chain, not_before=pai.not_valid_after_utc + timedelta(days=1))


def test_wrong_signer_is_caught_before_release(chain: tuple) -> None:
    _, other_key = pki.make_pai(*pki.make_paa(), VID)
    for signer in (InMemorySigner(other_key), DigestOnlySigner(other_key)):
        with pytest.raises(AttestationError, match="signature does not verify"):
            _issue(chain, signer)


def test_malformed_hsm_signature(chain: tuple) -> None:
    class Broken(DigestOnlySigner):
        def sign_digest(self, digest: bytes) -> bytes:
            return b"\x30\x00"

    with pytest.raises(AttestationError):
        _issue(chain, Broken(chain[2]))


def test_verify_rejects_another_pai(chain: tuple) -> None:
    dac = _issue(chain)
    paa, paa_key = pki.make_paa(vendor_id=VID, now=NOW - timedelta(days=1))
    other_pai, _ = pki.make_pai(paa, paa_key, VID, now=NOW - timedelta(days=1))
    with pytest.raises(AttestationError, match=r"issuer|authorityKeyIdentifier"):
        verify_dac(dac.certificate, other_pai)


def test_verify_expected_ids(chain: tuple) -> None:
    dac = _issue(chain).certificate
    verify_dac(dac, chain[1], vendor_id=VID, product_id=PID)
    with pytest.raises(AttestationError, match="VendorID"):
        verify_dac(dac, chain[1], vendor_id=0xFFF2)
    with pytest.raises(AttestationError, match="ProductID"):
        verify_dac(dac, chain[1], product_id=0x8001)


def test_pai_pid_constrains_dacs() -> None:
    paa, paa_key = pki.make_paa(now=NOW - timedelta(days=1))
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID, now=NOW - timedelta(days=1))
    chain = (paa, pai, pai_key)
    verify_chain(_issue(chain).certificate, pai, paa)
    with pytest.raises(AttestationError, match="differs from the PAI"):
        _issue(chain, product_id=0x8001)
    with pytest.raises(AttestationError, match="differs from the PAI"):
        _issue(chain, vendor_id=0xFFF2)


def _forge(pai: x509.Certificate, pai_key: ec.EllipticCurvePrivateKey, **overrides: object):
    """A DAC built by hand, to show verify_dac rejects each profile violation."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = overrides.get(
        "subject",
        x509.Name(
            [
                x509.NameAttribute(VENDOR_ID_OID, "FFF1"),
                x509.NameAttribute(PRODUCT_ID_OID, "8000"),
            ]
        ),
    )
    pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)  # type: ignore[arg-type]
        .issuer_name(pai.subject)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            overrides.get("bc", x509.BasicConstraints(ca=False, path_length=None)),  # type: ignore[arg-type]
            critical=bool(overrides.get("bc_critical", True)),
        )
        .add_extension(attestation.DIGITAL_SIGNATURE_ONLY, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(pai_skid, None, None), critical=False)
    )
    return builder.sign(pai_key, hashes.SHA256())


def test_profile_violations_are_named(chain: tuple) -> None:
    _, pai, pai_key = chain
    verify_dac(_forge(pai, pai_key), pai)  # the baseline passes
    with pytest.raises(AttestationError, match="CA:FALSE"):
        verify_dac(_forge(pai, pai_key, bc=x509.BasicConstraints(ca=True, path_length=0)), pai)
    with pytest.raises(AttestationError, match="critical"):
        verify_dac(_forge(pai, pai_key, bc_critical=False), pai)
    lower = x509.Name(
        [x509.NameAttribute(VENDOR_ID_OID, "fff1"), x509.NameAttribute(PRODUCT_ID_OID, "8000")]
    )
    with pytest.raises(AttestationError, match="uppercase"):
        verify_dac(_forge(pai, pai_key, subject=lower), pai)
    printable = x509.Name(
        [
            x509.NameAttribute(VENDOR_ID_OID, "FFF1", x509.name._ASN1Type.PrintableString),
            x509.NameAttribute(PRODUCT_ID_OID, "8000"),
        ]
    )
    with pytest.raises(AttestationError, match="UTF8String"):
        verify_dac(_forge(pai, pai_key, subject=printable), pai)
    no_pid = x509.Name([x509.NameAttribute(VENDOR_ID_OID, "FFF1")])
    with pytest.raises(AttestationError, match="both VendorID and ProductID"):
        verify_dac(_forge(pai, pai_key, subject=no_pid), pai)


def test_in_memory_signer_rejects_other_curves() -> None:
    with pytest.raises(InvalidInput):
        InMemorySigner(ec.generate_private_key(ec.SECP384R1()))


def test_sign_digest_is_ecdsa_over_the_digest(chain: tuple) -> None:
    signer = InMemorySigner(chain[2])
    message = b"matterfab"
    signature = signer.sign_digest(hashlib.sha256(message).digest())
    signer.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_assembled_certificate_der_encoding() -> None:
    # Long-form DER lengths: a 300-octet body needs 0x82 0x01 0x2c.
    assert attestation._der_length(0x7F) == b"\x7f"
    assert attestation._der_length(0x80) == b"\x81\x80"
    assert attestation._der_length(300) == b"\x82\x01\x2c"


def test_dac_validity_helper() -> None:
    start, end = attestation.dac_validity(NOW.replace(tzinfo=None), 365)
    assert start == NOW and end == NOW + timedelta(days=365)
    assert attestation.dac_validity(NOW, None) == (NOW, None)


def test_dac_public_key_read_from_its_bytes_equals_cryptography(chain: tuple) -> None:
    """`device.dac_public_key_raw` reads the P-256 point straight from the DER: the same bytes
    as parsing the certificate, on issued DACs, the CHIP test DAC and both serial lengths."""
    from matterfab.matter import device

    dacs = [_issue(chain) for _ in range(200)]
    dacs += [_issue(chain, serial=1), _issue(chain, serial=2**159 - 1)]
    for dac in dacs:
        assert device.dac_public_key_raw(dac.der) == dac.public_key_raw
        assert device.dac_public_key_parsed(dac.der) == dac.public_key_raw
    vector = x509.load_pem_x509_certificate(
        (vectors_dir() / "Chip-Test-DAC-FFF1-8000-0000-Cert.pem").read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    assert device.dac_public_key_raw(vector) == device.dac_public_key_parsed(vector)


def test_dac_public_key_falls_back_to_parsing_when_the_bytes_are_not_plain(chain: tuple) -> None:
    """The prefix twice, cut short, another curve, or no certificate at all: `cryptography`
    decides (and refuses what is not a certificate)."""
    from matterfab.matter import device

    dac = _issue(chain)
    twice = dac.der + device.P256_SPKI_PREFIX + bytes(64)  # trailing junk: parsing refuses it
    with pytest.raises(ValueError):
        device.dac_public_key_raw(twice)
    cut = dac.der[: dac.der.find(device.P256_SPKI_PREFIX) + 40]
    with pytest.raises(ValueError):
        device.dac_public_key_raw(cut)
    _, pai, pai_key = chain
    p384 = ec.generate_private_key(ec.SECP384R1())
    other = (
        x509.CertificateBuilder()
        .subject_name(pai.subject)
        .issuer_name(pai.subject)
        .public_key(p384.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(pai_key, hashes.SHA256())
    )
    der = other.public_bytes(serialization.Encoding.DER)
    assert device.P256_SPKI_PREFIX not in der
    assert device.dac_public_key_raw(der) == p384.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    with pytest.raises(ValueError):
        device.dac_public_key_raw(b"not a certificate")
