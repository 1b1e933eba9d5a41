"""OpenSSL, an independent X.509 implementation, accepts our DAC chains and rejects bad ones.

`openssl verify -x509_strict` checks RFC 5280 path validation (signatures, names, key
identifiers, CA flags, key usage, path length, validity) with strict encoding checks.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import vectors_path
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError
from matterfab.matter import pki
from matterfab.matter.attestation import (
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    InMemorySigner,
    IssuedDac,
    issue_dac,
    verify_chain,
    verify_dac,
)

VID, PID = 0xFFF1, 0x8000


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verify(tmp: Path, paa: x509.Certificate, pai: x509.Certificate, dac: bytes) -> str:
    """Run openssl verify; return its combined output ('OK' in it only on success)."""
    paa_pem = _pem(tmp / "paa.pem", paa)
    pai_pem = _pem(tmp / "pai.pem", pai)
    dac_der = tmp / "dac.der"
    dac_der.write_bytes(dac)
    dac_pem = tmp / "dac.pem"
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(dac_der), "-out", str(dac_pem)],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(paa_pem),
         "-untrusted", str(pai_pem), str(dac_pem)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    return f"rc={result.returncode} {result.stdout}{result.stderr}"


def _generated_chain() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    paa, paa_key = pki.make_paa(vendor_id=VID)
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID)
    return paa, pai, pai_key


def _sdk_paa_chain() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    vectors = vectors_path.vectors_dir()
    paa = x509.load_pem_x509_certificate((vectors / "Chip-Test-PAA-FFF1-Cert.pem").read_bytes())
    paa_key = serialization.load_pem_private_key(
        (vectors / "Chip-Test-PAA-FFF1-Key.pem").read_bytes(), None
    )
    assert isinstance(paa_key, ec.EllipticCurvePrivateKey)
    pai, pai_key = pki.make_pai(paa, paa_key, VID)
    return paa, pai, pai_key


CHAINS = {"generated_paa": _generated_chain, "matter_test_paa": _sdk_paa_chain}


def _dac(pai: x509.Certificate, pai_key: ec.EllipticCurvePrivateKey) -> IssuedDac:
    return issue_dac(
        pai_cert=pai,
        signer=InMemorySigner(pai_key),
        vendor_id=VID,
        product_id=PID,
        not_before=datetime.now(UTC),
        not_after=None,
        common_name="matterfab DAC",
    )


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_openssl_accepts(tmp_path: Path, chain: str) -> None:
    paa, pai, pai_key = CHAINS[chain]()
    dac = _dac(pai, pai_key)
    verify_chain(dac.certificate, pai, paa)
    output = openssl_verify(tmp_path, paa, pai, dac.der)
    assert "rc=0" in output and ": OK" in output, output


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_openssl_rejects_a_flipped_signature_byte(tmp_path: Path, chain: str) -> None:
    paa, pai, pai_key = CHAINS[chain]()
    der = bytearray(_dac(pai, pai_key).der)
    # The last octet is inside the signature's s integer: flipping it keeps the DER valid.
    der[-1] ^= 0x01
    output = openssl_verify(tmp_path, paa, pai, bytes(der))
    assert "rc=0" not in output, output
    assert "signature" in output.lower(), output


def test_openssl_rejects_a_dac_from_another_pai(tmp_path: Path) -> None:
    paa, pai, _ = _generated_chain()
    _, other_pai, other_key = _generated_chain()  # same subject names, different keys
    dac = _dac(other_pai, other_key)
    output = openssl_verify(tmp_path, paa, pai, dac.der)
    assert "rc=0" not in output, output


def test_dac_profile_fields() -> None:
    _, pai, pai_key = _generated_chain()
    cert = _dac(pai, pai_key).certificate
    for oid, text in ((VENDOR_ID_OID, "FFF1"), (PRODUCT_ID_OID, "8000")):
        (attr,) = cert.subject.get_attributes_for_oid(oid)
        assert attr.value == text
        assert attr._type == x509.name._ASN1Type.UTF8String
    assert VENDOR_ID_OID.dotted_string == "1.3.6.1.4.1.37244.2.1"
    assert PRODUCT_ID_OID.dotted_string == "1.3.6.1.4.1.37244.2.2"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_agreement)
    skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not skid.critical and len(skid.value.digest) == 20
    akid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert akid.key_identifier == pai_skid
    serial = cert.serial_number
    assert serial > 0
    assert len(serial.to_bytes((serial.bit_length() + 8) // 8, "big")) <= 20
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert pai.not_valid_before_utc <= cert.not_valid_before_utc <= pai.not_valid_after_utc


def _shape(cert: x509.Certificate) -> tuple:
    """What the profile fixes: extension types and criticality, subject types, algorithms."""
    return (
        cert.version,
        cert.signature_algorithm_oid,
        sorted((ext.oid.dotted_string, ext.critical) for ext in cert.extensions),
        [(attr.oid.dotted_string, attr._type) for attr in cert.subject],
        cert.extensions.get_extension_for_class(x509.BasicConstraints).value,
        cert.extensions.get_extension_for_class(x509.KeyUsage).value,
    )


def test_dac_has_the_sdk_example_shape() -> None:
    vectors = vectors_path.vectors_dir()
    sdk_dac = x509.load_pem_x509_certificate(
        (vectors / "Chip-Test-DAC-FFF1-8000-0000-Cert.pem").read_bytes()
    )
    sdk_pai = x509.load_pem_x509_certificate(
        (vectors / "Chip-Test-PAI-FFF1-8000-Cert.pem").read_bytes()
    )
    paa, paa_key = pki.make_paa()
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID, common_name="Matter Test PAI")
    ours = issue_dac(
        pai_cert=pai,
        signer=InMemorySigner(pai_key),
        vendor_id=VID,
        product_id=PID,
        not_before=datetime.now(UTC),
        not_after=None,
        common_name="Matter Test DAC 0000",
    ).certificate
    assert _shape(ours) == _shape(sdk_dac)
    assert _shape(pai) == _shape(sdk_pai)
    assert ours.subject == sdk_dac.subject


def test_sdk_example_dac_does_not_chain_to_its_example_pai(tmp_path: Path) -> None:
    # The vectors README says these are format examples that do not chain; our verifier and
    # OpenSSL must agree on that (a verifier that accepted it would be checking nothing).
    vectors = vectors_path.vectors_dir()
    dac = x509.load_pem_x509_certificate(
        (vectors / "Chip-Test-DAC-FFF1-8000-0000-Cert.pem").read_bytes()
    )
    pai = x509.load_pem_x509_certificate(
        (vectors / "Chip-Test-PAI-FFF1-8000-Cert.pem").read_bytes()
    )
    paa = x509.load_pem_x509_certificate((vectors / "Chip-Test-PAA-FFF1-Cert.pem").read_bytes())
    with pytest.raises(AttestationError, match="authorityKeyIdentifier"):
        verify_dac(dac, pai)
    output = openssl_verify(tmp_path, paa, pai, dac.public_bytes(serialization.Encoding.DER))
    assert "rc=0" not in output, output
