"""The PAI's CRL (matter/crl.py), checked by OpenSSL, for file keys and digest-only signers."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import InvalidInput
from matterfab.matter import crl, pki
from matterfab.matter.attestation import InMemorySigner, issue_dac

VID, PID = 0xFFF1, 0x8000
NOW = datetime.now(UTC).replace(microsecond=0)


class DigestOnlySigner:
    """Like an HSM: signs digests, never hands its key to cryptography's builder."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._inner = InMemorySigner(key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    def sign_digest(self, digest: bytes) -> bytes:
        return self._inner.sign_digest(digest)


@pytest.fixture(scope="module")
def chain() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    paa, paa_key = pki.make_paa(vendor_id=VID, now=NOW - timedelta(days=1))
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID, now=NOW - timedelta(days=1))
    return paa, pai, pai_key


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("kind", ["file", "digest-only"])
def test_openssl_checks_the_crl(chain: tuple, kind: str, tmp_path: Path) -> None:
    paa, pai, pai_key = chain
    signer = InMemorySigner(pai_key) if kind == "file" else DigestOnlySigner(pai_key)
    dacs = [
        issue_dac(
            pai_cert=pai,
            signer=InMemorySigner(pai_key),
            vendor_id=VID,
            product_id=PID,
            not_before=NOW - timedelta(hours=1),
            not_after=None,
        )
        for _ in range(2)
    ]
    revoked = [crl.RevokedDac(dacs[0].serial_hex, NOW, "keyCompromise")]
    der = crl.build_crl(
        pai=pai, signer=signer, number=7, revoked=revoked, this_update=NOW, next_update_days=30
    )
    (tmp_path / "crl.der").write_bytes(der)
    paa_pem, pai_pem = _pem(tmp_path / "paa.pem", paa), _pem(tmp_path / "pai.pem", pai)
    done = _openssl("crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-CAfile",
                    str(pai_pem), "-noout", "-verify")  # fmt: skip
    assert done.returncode == 0 and "verify OK" in done.stderr + done.stdout
    text = _openssl("crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text")
    assert "Version 2" in text.stdout and "X509v3 CRL Number" in text.stdout
    assert "Key Compromise" in text.stdout and "X509v3 Authority Key Identifier" in text.stdout
    pem_crl = tmp_path / "crl.pem"
    pem_crl.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    for n, dac in enumerate(dacs):
        dac_pem = _pem(tmp_path / f"dac{n}.pem", dac.certificate)
        got = _openssl("verify", "-crl_check", "-CAfile", str(paa_pem), "-untrusted",
                       str(pai_pem), "-CRLfile", str(pem_crl), str(dac_pem))  # fmt: skip
        if n == 0:
            assert got.returncode != 0 and "certificate revoked" in got.stdout + got.stderr
        else:
            assert got.returncode == 0, got.stdout + got.stderr


def test_entries_numbers_and_reasons(chain: tuple) -> None:
    _, pai, pai_key = chain
    entries = [
        crl.RevokedDac(f"{n:040x}", NOW - timedelta(days=n), reason)
        for n, reason in enumerate(crl.REASONS, start=1)
    ]
    der = crl.build_crl(
        pai=pai, signer=InMemorySigner(pai_key), number=2**64, revoked=entries,
        this_update=NOW, next_update_days=7,
    )  # fmt: skip
    parsed = x509.load_der_x509_crl(der)
    assert crl.crl_number(der) == 2**64
    assert parsed.issuer == pai.subject
    assert parsed.next_update_utc == NOW + timedelta(days=7)
    akid = parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert akid.key_identifier == skid.digest
    by_serial = {r.serial_number: r for r in parsed}
    for e in entries:
        r = by_serial[int(e.serial_hex, 16)]
        assert r.revocation_date_utc == e.revoked_at
        reasons = [x.value.reason for x in r.extensions if isinstance(x.value, x509.CRLReason)]
        # RFC 5280 §5.3.1: no reasonCode rather than `unspecified`.
        assert reasons == ([] if e.reason == "unspecified" else [crl.REASONS[e.reason]])


def test_bad_input(chain: tuple) -> None:
    _, pai, pai_key = chain
    other = ec.generate_private_key(ec.SECP256R1())
    kw = dict(pai=pai, revoked=[], this_update=NOW, next_update_days=1)
    with pytest.raises(InvalidInput, match="does not match the PAI"):
        crl.build_crl(signer=InMemorySigner(other), number=1, **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="crl_number"):
        crl.build_crl(signer=InMemorySigner(pai_key), number=0, **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="reason: must be one of"):
        crl.check_reason("stolen")


def test_revocation_point(chain: tuple) -> None:
    _, pai, pai_key = chain
    der = crl.build_crl(pai=pai, signer=InMemorySigner(pai_key), number=1, revoked=[],
                        this_update=NOW, next_update_days=1)  # fmt: skip
    point = crl.revocation_point(pai=pai, crl_der=der, data_url="https://x.test/c.crl", label="L")
    assert point["vid"] == VID and point["pid"] == PID and point["isPAA"] is False
    assert point["label"] == "L" and point["dataURL"] == "https://x.test/c.crl"
    assert point["revocationType"] == 1 and point["dataDigestType"] == 1
    assert point["dataFileSize"] == len(der)
    assert base64.b64decode(point["dataDigest"]) == hashlib.sha256(der).digest()
    assert x509.load_pem_x509_certificate(point["crlSignerCertificate"].encode()) == pai
    skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert point["issuerSubjectKeyID"] == skid.hex().upper()
    with pytest.raises(InvalidInput, match="data_url"):
        crl.revocation_point(pai=pai, crl_der=der, data_url="ftp://x", label="L")
