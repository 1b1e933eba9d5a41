"""The Matter PAI profile checks and the PAI CSR, on certificates made here."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from matterfab.errors import InvalidInput
from matterfab.matter import pai_profile, pki
from matterfab.matter.attestation import PRODUCT_ID_OID, VENDOR_ID_OID, InMemorySigner

VID, PID = 0xFFF1, 0x8000


def _good() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    paa, paa_key = pki.make_paa("PAA", VID)
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID)
    return pai, paa, pai_key


def _reissue(
    pai: x509.Certificate,
    paa_key: ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name | None = None,
    drop: type | None = None,
    replace: x509.ExtensionType | None = None,
    critical: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or pai.subject)
        .issuer_name(pai.issuer)
        .public_key(pai.public_key())  # type: ignore[arg-type]
        .serial_number(pai.serial_number)
        .not_valid_before(pai.not_valid_before_utc)
        .not_valid_after(pai.not_valid_after_utc)
    )
    for ext in pai.extensions:
        if drop is not None and isinstance(ext.value, drop):
            continue
        if replace is not None and type(ext.value) is type(replace):
            builder = builder.add_extension(replace, critical)
            continue
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(paa_key, hashes.SHA256())


def test_a_good_pai_has_no_problems() -> None:
    pai, paa, _ = _good()
    assert pai_profile.pai_problems(pai, vendor_id=VID, product_id=PID) == []
    assert pai_profile.paa_problems(paa) == []
    assert pai_profile.chain_problem(pai, paa) is None


def test_each_broken_rule_is_named() -> None:
    paa, paa_key = pki.make_paa("PAA", VID)
    pai = pki.make_pai(paa, paa_key, VID, PID)[0]
    cases = {
        "PAI pathLenConstraint must be 0, got 1": _reissue(
            pai, paa_key, replace=x509.BasicConstraints(ca=True, path_length=1)
        ),
        "PAI pathLenConstraint must be 0, got None": _reissue(
            pai, paa_key, replace=x509.BasicConstraints(ca=True, path_length=None)
        ),
        "PAI keyUsage must be critical": _reissue(
            pai,
            paa_key,
            replace=pai.extensions.get_extension_for_class(x509.KeyUsage).value,
            critical=False,
        ),
        "PAI has no subjectKeyIdentifier extension": _reissue(
            pai, paa_key, drop=x509.SubjectKeyIdentifier
        ),
        "PAI subject must carry a Matter VendorID": _reissue(
            pai, paa_key, subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PAI")])
        ),
        "PAI VendorID must be a UTF8String, got PrintableString": _reissue(
            pai,
            paa_key,
            subject=x509.Name(
                [x509.NameAttribute(VENDOR_ID_OID, "FFF1", x509.name._ASN1Type.PrintableString)]
            ),
        ),
        "PAI VendorID must be 4 uppercase hex digits, got 'fff1'": _reissue(
            pai, paa_key, subject=x509.Name([x509.NameAttribute(VENDOR_ID_OID, "fff1")])
        ),
    }
    for message, cert in cases.items():
        problems = pai_profile.pai_problems(cert)
        assert any(message in p for p in problems), (message, problems)
    assert pai_profile.pai_problems(pai, vendor_id=0xFFF2) == ["PAI VendorID is 0xFFF1, not 0xFFF2"]
    assert pai_profile.pai_problems(pai, product_id=0x8001) == [
        "PAI ProductID is 0x8000, not 0x8001"
    ]


def test_validity() -> None:
    paa, paa_key = pki.make_paa("PAA", VID)
    pai = pki.make_pai(paa, paa_key, VID, valid_days=100)[0]
    later = datetime.now(UTC) + timedelta(days=200)
    assert pai_profile.pai_problems(pai, now=later) == [
        f"PAI expired on {pai.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    ]
    earlier = datetime.now(UTC) - timedelta(days=1)
    assert pai_profile.pai_problems(pai, now=earlier)[0].startswith("PAI is not valid before")
    assert pai_profile.dac_validity_problem(pai, None) is None
    assert pai_profile.dac_validity_problem(pai, 50) is None
    problem = pai_profile.dac_validity_problem(pai, 150)
    assert problem is not None and "use at most 99" in problem
    assert pai_profile.dac_validity_problem(pai, 0) == "must be at least 1, got 0"


def test_chain_problems() -> None:
    pai, _, _ = _good()
    other_paa = pki.make_paa("Other", VID)[0]
    assert pai_profile.chain_problem(pai, other_paa) == (
        "PAI issuer does not match the PAA's subject"
    )
    # Same name, other key: the key identifier, then the signature, give it away.
    same_name = pki.make_paa("PAA", VID)[0]
    assert pai_profile.chain_problem(pai, same_name) == (
        "PAI authorityKeyIdentifier is not the PAA's subjectKeyIdentifier"
    )
    paa_fff2 = pki.make_paa("PAA", 0xFFF2)
    pai_fff1 = pki.make_pai(*paa_fff2, VID)[0]
    assert pai_profile.chain_problem(pai_fff1, paa_fff2[0]) == (
        "PAI VendorID 0xFFF1 differs from the PAA's 0xFFF2"
    )
    # A PAI is not a PAA: pathlen 0 and not self-signed.
    problems = pai_profile.paa_problems(pai)
    assert "PAA must be self-signed (issuer equal to subject)" in problems


def test_key_matches() -> None:
    pai, _, key = _good()
    assert pai_profile.key_matches(InMemorySigner(key), pai)
    assert not pai_profile.key_matches(InMemorySigner(ec.generate_private_key(ec.SECP256R1())), pai)


def test_csr_subject_key_and_signature(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pai_profile.build_csr(InMemorySigner(key), VID, PID, "Acme PAI")
    assert csr.is_signature_valid and csr.public_key() == key.public_key()
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    cn, vid, pid = csr.subject  # CN first, then VID, then PID
    assert cn.oid == NameOID.COMMON_NAME and cn.value == "Acme PAI"
    assert (vid.oid, vid.value, vid._type.name) == (VENDOR_ID_OID, "FFF1", "UTF8String")
    assert (pid.oid, pid.value, pid._type.name) == (PRODUCT_ID_OID, "8000", "UTF8String")
    assert len(list(csr.attributes)) == 0
    # OpenSSL, an independent parser, verifies it.
    path = tmp_path / "pai.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(
        ["openssl", "req", "-in", str(path), "-noout", "-verify"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "verify OK" in done.stdout + done.stderr
    vid_only = pai_profile.build_csr(InMemorySigner(key), VID, None, "PAI")
    assert not vid_only.subject.get_attributes_for_oid(PRODUCT_ID_OID)


@pytest.mark.parametrize(
    ("vid", "pid", "cn", "field"),
    [(0, None, "x", "vendor_id"), (VID, 0, "x", "product_id"), (VID, None, "", "common_name")],
)
def test_csr_refuses_bad_subjects(vid: int, pid: int | None, cn: str, field: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidInput) as info:
        pai_profile.build_csr(InMemorySigner(key), vid, pid, cn)
    assert info.value.field == field
