"""OpenSSL, an independent CMS implementation, verifies the CDs we sign and the SDK's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import vectors_path
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.matter import cd, pki


def _openssl_verify(
    cd_der: Path, signer_pem: Path, content_out: Path
) -> subprocess.CompletedProcess:
    # -noverify: the signer cert is a trust anchor of its own, not a TLS-style chain; the
    # signer is found by subjectKeyIdentifier among -certfile, as Matter commissioners do.
    return subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(cd_der),
            "-certfile", str(signer_pem), "-noverify", "-out", str(content_out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def test_openssl_verifies_sdk_cd(tmp_path: Path) -> None:
    vectors = vectors_path.vectors_dir()
    out = tmp_path / "content.tlv"
    result = _openssl_verify(
        vectors / "Chip-Test-CD-FFF1-8000-8063.der", vectors / "Chip-Test-CD-Signing-Cert.pem", out
    )
    assert result.returncode == 0, result.stderr
    assert cd.decode_cd_content(out.read_bytes()).vendor_id == 0xFFF1


def test_openssl_verifies_our_cd(tmp_path: Path) -> None:
    vectors = vectors_path.vectors_dir()
    cert = x509.load_pem_x509_certificate((vectors / "Chip-Test-CD-Signing-Cert.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (vectors / "Chip-Test-CD-Signing-Key.pem").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    content = cd.CdContent(
        vendor_id=0xFFF1,
        product_id_array=[0x8000, 0x8001],
        device_type_id=0x16,
        certificate_id="ZIG20142ZB330003-24",
        version_number=1,
    )
    der = tmp_path / "cd.der"
    der.write_bytes(cd.sign_cd(content, cert, key))
    out = tmp_path / "content.tlv"
    result = _openssl_verify(der, vectors / "Chip-Test-CD-Signing-Cert.pem", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == cd.encode_cd_content(content)


def test_openssl_rejects_our_cd_with_another_signer(tmp_path: Path) -> None:
    cert, key = pki.make_cd_signing()
    other, _ = pki.make_cd_signing()
    content = cd.CdContent(
        vendor_id=0xFFF1,
        product_id_array=[0x8000],
        device_type_id=0x16,
        certificate_id="ZIG20142ZB330003-24",
        version_number=1,
    )
    der = tmp_path / "cd.der"
    der.write_bytes(cd.sign_cd(content, cert, key))
    other_pem = tmp_path / "other.pem"
    other_pem.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    result = _openssl_verify(der, other_pem, tmp_path / "out")
    assert result.returncode != 0
