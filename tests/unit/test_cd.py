"""Certification Declaration: the SDK example CD, our own CDs, round trips and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import vectors_path
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import cd, pki, tlv
from matterfab.matter.cd import CdContent

SDK_CD = "Chip-Test-CD-FFF1-8000-8063.der"


@pytest.fixture(scope="module")
def vectors() -> Path:
    return vectors_path.vectors_dir()


@pytest.fixture(scope="module")
def sdk_cd(vectors: Path) -> bytes:
    return (vectors / SDK_CD).read_bytes()


@pytest.fixture(scope="module")
def sdk_signing(vectors: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((vectors / "Chip-Test-CD-Signing-Cert.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (vectors / "Chip-Test-CD-Signing-Key.pem").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def test_parse_sdk_example(sdk_cd: bytes) -> None:
    content = cd.parse_cd(sdk_cd)
    assert content.format_version == 1
    assert content.vendor_id == 0xFFF1
    assert content.product_id_array == list(range(0x8000, 0x8064))
    assert content.device_type_id == 0x16
    assert content.certificate_id == "ZIG20142ZB330003-24"
    assert content.security_level == 0
    assert content.security_information == 0
    assert content.version_number == 0x2694
    assert content.certification_type == 0
    assert content.dac_origin_vendor_id is None
    assert content.authorized_paa_list == []


def test_verify_sdk_example(sdk_cd: bytes, sdk_signing: tuple) -> None:
    cert, _ = sdk_signing
    assert cd.verify_cd(sdk_cd, cert) == cd.parse_cd(sdk_cd)
    assert cd.cd_signer_key_id(sdk_cd) == bytes.fromhex("62fa823359acfaa9963e1cfa140addf504f37160")


def test_sdk_example_content_reencodes_byte_for_byte(sdk_cd: bytes) -> None:
    payload = cms.ContentInfo.load(sdk_cd)["content"]["encap_content_info"]["content"].native
    assert cd.encode_cd_content(cd.decode_cd_content(payload)) == payload


def test_envelope_matches_sdk_byte_for_byte(sdk_cd: bytes) -> None:
    # Our envelope around the SDK's content and signature is the SDK's CD exactly: same CMS
    # layout, same algorithm identifiers (no NULL parameters), same signer identifier.
    parts = cd._open_envelope(sdk_cd)
    assert cd._assemble(parts.payload, parts.signer_key_id, parts.signature) == sdk_cd


def test_our_cd_has_the_sdk_layout(sdk_cd: bytes, sdk_signing: tuple) -> None:
    cert, key = sdk_signing
    ours = cd.sign_cd(cd.parse_cd(sdk_cd), cert, key)
    assert cd.verify_cd(ours, cert) == cd.parse_cd(sdk_cd)
    # ECDSA signatures are randomised; with the SDK's signature swapped in, the bytes match.
    mine = cd._open_envelope(ours)
    ref = cd._open_envelope(sdk_cd)
    assert mine.payload == ref.payload
    assert cd._assemble(mine.payload, mine.signer_key_id, ref.signature) == sdk_cd


def test_wrong_certificate_is_rejected(sdk_cd: bytes) -> None:
    other, _ = pki.make_cd_signing()
    with pytest.raises(AttestationError, match="signed by key"):
        cd.verify_cd(sdk_cd, other)


def test_tampered_content_is_rejected(sdk_cd: bytes, sdk_signing: tuple) -> None:
    cert, _ = sdk_signing
    tampered = sdk_cd.replace(bytes.fromhex("2501f1ff"), bytes.fromhex("2501f2ff"), 1)
    assert tampered != sdk_cd
    with pytest.raises(AttestationError, match="signature does not verify"):
        cd.verify_cd(tampered, cert)


def test_key_mismatch_refused(sdk_signing: tuple) -> None:
    cert, _ = sdk_signing
    _, other_key = pki.make_cd_signing()
    with pytest.raises(AttestationError, match="does not match"):
        cd.sign_cd(_content(), cert, other_key)


def test_garbage_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        cd.parse_cd(b"\x30\x03\x02\x01\x01")
    assert info.value.field == "certification_declaration"


def test_signed_attributes_are_refused(sdk_cd: bytes) -> None:
    info = cms.ContentInfo.load(sdk_cd)
    signer = info["content"]["signer_infos"][0]
    signer["signed_attrs"] = cms.CMSAttributes([{"type": "content_type", "values": ["data"]}])
    with pytest.raises(InvalidInput, match="signed attributes"):
        cd.parse_cd(info.dump(force=True))


def _content(**changes: object) -> CdContent:
    fields: dict[str, object] = {
        "vendor_id": 0xFFF1,
        "product_id_array": [0x8000],
        "device_type_id": 0x16,
        "certificate_id": "ZIG20142ZB330003-24",
        "version_number": 1,
    }
    fields.update(changes)
    return CdContent(**fields)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"product_id_array": []}, "product_id_array"),
        ({"product_id_array": list(range(1, 102))}, "product_id_array"),
        ({"product_id_array": [0x10000]}, "product_id_array"),
        ({"certificate_id": "short"}, "certificate_id"),
        ({"vendor_id": -1}, "vendor_id"),
        ({"certification_type": 3}, "certification_type"),
        ({"dac_origin_vendor_id": 0xFFF1}, "dac_origin_vendor_id"),
        ({"authorized_paa_list": [b"\x00" * 19]}, "authorized_paa_list"),
        ({"security_level": 256}, "security_level"),
    ],
)
def test_content_rules(changes: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        cd.encode_cd_content(_content(**changes))
    assert info.value.field == f"certification_declaration.{field}"


def test_missing_member_is_named() -> None:
    payload = tlv.encode(tlv.Structure(((0, tlv.UInt(1)),)))
    with pytest.raises(InvalidInput, match="product_id_array"):
        cd.decode_cd_content(payload)


_u16 = st.integers(0, 0xFFFF)
_contents = st.builds(
    CdContent,
    vendor_id=_u16,
    product_id_array=st.lists(_u16, min_size=1, max_size=100),
    device_type_id=st.integers(0, 0xFFFFFFFF),
    certificate_id=st.text(min_size=19, max_size=19),
    version_number=_u16,
    format_version=_u16,
    security_level=st.integers(0, 0xFF),
    security_information=_u16,
    certification_type=st.integers(0, 2),
    dac_origin_vendor_id=st.none(),
    dac_origin_product_id=st.none(),
    authorized_paa_list=st.lists(st.binary(min_size=20, max_size=20), max_size=10),
)


@given(_contents, st.one_of(st.none(), st.tuples(_u16, _u16)))
def test_content_round_trip(content: CdContent, origin: tuple[int, int] | None) -> None:
    if origin is not None:
        content = CdContent(
            **{
                **content.__dict__,
                "dac_origin_vendor_id": origin[0],
                "dac_origin_product_id": origin[1],
            }
        )
    assert cd.decode_cd_content(cd.encode_cd_content(content)) == content


_SIGNING = pki.make_cd_signing()


@settings(max_examples=25)
@given(_contents)
def test_signed_round_trip(content: CdContent) -> None:
    cert, key = _SIGNING
    assert cd.verify_cd(cd.sign_cd(content, cert, key), cert) == content
