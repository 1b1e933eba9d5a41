"""Test PKI: PAA, PAI and CD signing certificates follow the Matter profiles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import pki
from matterfab.matter.attestation import PRODUCT_ID_OID, VENDOR_ID_OID, verify_pai


def _ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def _skid(cert: x509.Certificate) -> bytes:
    return _ext(cert, x509.SubjectKeyIdentifier).value.digest


def test_paa_profile() -> None:
    paa, key = pki.make_paa("Test PAA", 0xFFF1)
    assert paa.subject == paa.issuer
    paa.verify_directly_issued_by(paa)
    bc = _ext(paa, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = _ext(paa, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert _ext(paa, x509.AuthorityKeyIdentifier).value.key_identifier == _skid(paa)
    assert paa.subject.get_attributes_for_oid(VENDOR_ID_OID)[0].value == "FFF1"
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(paa.signature_hash_algorithm, hashes.SHA256)


def test_paa_without_vid() -> None:
    paa, _ = pki.make_paa()
    assert not paa.subject.get_attributes_for_oid(VENDOR_ID_OID)


def test_pai_profile() -> None:
    paa, paa_key = pki.make_paa()
    pai, pai_key = pki.make_pai(paa, paa_key, 0xFFF1, 0x8000)
    verify_pai(pai, paa)
    pai.verify_directly_issued_by(paa)
    bc = _ext(pai, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert _ext(pai, x509.KeyUsage).critical
    assert _ext(pai, x509.AuthorityKeyIdentifier).value.key_identifier == _skid(paa)
    assert pai.subject.get_attributes_for_oid(VENDOR_ID_OID)[0].value == "FFF1"
    assert pai.subject.get_attributes_for_oid(PRODUCT_ID_OID)[0].value == "8000"
    assert pai.public_key() == pai_key.public_key()
    assert paa.not_valid_before_utc <= pai.not_valid_before_utc
    assert pai.not_valid_after_utc <= paa.not_valid_after_utc


def test_pai_is_clamped_to_the_paa() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    paa, paa_key = pki.make_paa(valid_days=30, now=now)
    pai, _ = pki.make_pai(paa, paa_key, 0xFFF1, valid_days=3650, now=now)
    assert pai.not_valid_after_utc == paa.not_valid_after_utc
    with pytest.raises(InvalidInput, match="expired"):
        pki.make_pai(paa, paa_key, 0xFFF1, now=now + timedelta(days=60))


def test_verify_pai_catches_vid_mismatch_and_wrong_issuer() -> None:
    paa, paa_key = pki.make_paa(vendor_id=0xFFF1)
    pai, _ = pki.make_pai(paa, paa_key, 0xFFF2)
    with pytest.raises(AttestationError, match="differs from the PAA"):
        verify_pai(pai, paa)
    other_paa, _ = pki.make_paa()
    good_pai, _ = pki.make_pai(paa, paa_key, 0xFFF1)
    with pytest.raises(AttestationError):
        verify_pai(good_pai, other_paa)


@pytest.mark.parametrize(
    ("vid", "pid", "field"),
    [(0, None, "vendor_id"), (0xFFF5, None, "vendor_id"), (0xFFF1, 0, "product_id")],
)
def test_invalid_ids(vid: int, pid: int | None, field: str) -> None:
    paa, paa_key = pki.make_paa()
    with pytest.raises(InvalidInput) as info:
        pki.make_pai(paa, paa_key, vid, pid)
    assert info.value.field == field


def test_cd_signing_cert() -> None:
    cert, key = pki.make_cd_signing()
    cert.verify_directly_issued_by(cert)
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    assert _skid(cert)


def test_issue_pai_for_an_external_key() -> None:
    paa, paa_key = pki.make_paa()
    external = ec.generate_private_key(ec.SECP256R1()).public_key()
    pai = pki.issue_pai(paa, paa_key, external, 0xFFF1)
    assert pai.public_key() == external
    verify_pai(pai, paa)
