"""One test per applicable bug of esp-matter-mfg-tool 1.0.29 (reference §4): matterfab does the
right thing where the tool does not. The number in each test name is the bug's in §4; bugs
with no counterpart here (3 --valid-from, 7 --no-secure-cert-bin, 17 --port) are listed in
docs/parity.md with the reason.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from matterfab import keysource
from matterfab.errors import InvalidInput
from matterfab.matter import device, device_info, identity, nvs, payload, secure_cert, spake2p
from matterfab.messages import WorkOrder
from matterfab.services.allocator.allocation import Claim, allocate_chunk

VID, PID = 0xFFF1, 0x8000


def order(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "order_id": "BUGS-1",
        "product": {"vendor_id": VID, "product_id": PID},
        "quantity": 1,
        "mfg_date": "2026-12-07",
        "attestation_profile": "p",
        "commissioning": {"iteration_count": 1000},
    }
    doc.update(changes)
    return doc


def errors(doc: dict[str, Any]) -> list[str]:
    """Every refusal of a work order as `field: message` (schema, then cross-field rules)."""
    try:
        wo = WorkOrder.model_validate(doc)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return [str(e) for e in wo.cross_field_errors()]


@pytest.mark.parametrize("passcode", [100_000_000, 1 << 27, 99_999_999, 0, -1])
def test_01_passcodes_out_of_range_are_refused(passcode: int) -> None:
    # The tool's range check is dead code: 100000000 passes and 2^27 corrupts the codes.
    assert errors(order(devices=[{"passcode": passcode}]))
    with pytest.raises(Exception, match="passcode"):
        identity.validate_passcode(passcode)


def test_02_discriminator_0_is_kept() -> None:
    # The tool replaces --discriminator 0 by a random one (`if args.discriminator:`).
    wo = WorkOrder.model_validate(order(devices=[{"discriminator": 0, "passcode": 20202021}]))
    (dev,) = allocate_chunk(wo, Claim(wo.order_id, 1, 1, 1234, 1), 0)
    assert dev["discriminator"] == 0
    qr, manual = device.onboarding_codes(VID, PID, "standard", ("ble",), 0, 20202021)
    assert payload.decode_qr(qr).discriminator == 0
    assert payload.decode_manual(manual).short_discriminator == 0


def test_04_an_encrypted_pai_key_is_used_with_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tool parses --pwd and never uses it: an encrypted PAI key cannot be used at all.
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "pai_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret-pw"),
        )
    )
    spec = {"type": "file", "path": str(path), "password_env": "MF_TEST_PAI_PW"}
    monkeypatch.setenv("MF_TEST_PAI_PW", "s3cret-pw")
    signer = keysource.load_signer(spec)
    assert signer.public_key() == key.public_key()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"tbs")
    signature = signer.sign_digest(digest.finalize())
    key.public_key().verify(signature, b"tbs", ec.ECDSA(hashes.SHA256()))
    (tmp_path / "pw").write_text("s3cret-pw\n")
    by_file = {"type": "file", "path": str(path), "password_file": str(tmp_path / "pw")}
    assert keysource.load_signer(by_file).public_key() == key.public_key()
    # `pki add --key-file F --pin-env VAR` names the password the same way.
    from matterfab import production_pki

    added = production_pki.key_spec(key_file=path, pin_env="MF_TEST_PAI_PW")
    assert added["password_env"] == "MF_TEST_PAI_PW"
    assert keysource.load_signer(added).public_key() == key.public_key()
    monkeypatch.setenv("MF_TEST_PAI_PW", "wrong")
    with pytest.raises(InvalidInput, match="does not decrypt"):
        keysource.load_signer(spec)
    with pytest.raises(InvalidInput, match="is encrypted: give its password"):
        keysource.load_signer({"type": "file", "path": str(path)})


def test_05_ecdsa_peripheral_image_holds_no_private_key() -> None:
    scalar = (7).to_bytes(32, "big")
    image = secure_cert.build_secure_cert(b"\x30" * 10, b"\x30" * 10, scalar, efuse_key_id=0)
    (key,) = [
        e for e in secure_cert.decode_entries(image) if e.type == secure_cert.TlvType.PRIV_KEY
    ]
    assert key.flags == secure_cert.FLAGS_ECDSA_PERIPHERAL and key.data == b""
    assert secure_cert.sec1_der(scalar) not in image


@pytest.mark.parametrize(
    ("secure", "rule"),
    [
        ({"efuse_key_id": 1}, "is only for key ecdsa-peripheral"),
        ({"key": "ecdsa-peripheral", "efuse_key_id": 1, "chip": "ESP32H2"}, "must be one of"),
        ({"key": "ecdsa-peripheral", "chip": "esp32h2"}, "is required"),
        ({"key": "ecdsa-peripheral", "efuse_key_id": 6, "chip": "esp32h2"}, "less than or equal"),
    ],
)
def test_06_efuse_options_give_clean_errors(secure: dict[str, Any], rule: str) -> None:
    got = errors(order(dac_storage="secure-cert", secure_cert=secure))
    assert any(rule in e for e in got), got


def test_08_secure_cert_options_outside_secure_cert_mode_are_refused() -> None:
    got = errors(order(dac_storage="on-module", secure_cert={"commissionable_data": True}))
    assert got == ["secure_cert: is only for dac_storage secure-cert"]


def test_09_dynamic_passcode_with_commissionable_data_in_secure_cert() -> None:
    # The tool crashes (KeyError: 'Verifier'); here 201/0, 2, 3 are written without 201/1.
    image = secure_cert.build_secure_cert(
        b"\x30" * 10,
        b"\x30" * 10,
        (7).to_bytes(32, "big"),
        commissionable=secure_cert.Commissionable(5, None, bytes(16), 1000),
    )
    matter = [e.subtype for e in secure_cert.decode_entries(image) if e.type == 201]
    assert matter == [0, 2, 3]


@pytest.mark.parametrize(("label", "ok"), [("x" * 16, True), ("x" * 17, False)])
def test_10_fixed_label_limits_are_matters_16(label: str, ok: bool) -> None:
    fl = [{"endpoint": 10, "label": label, "value": "v"}]
    got = errors(order(product={"vendor_id": VID, "product_id": PID, "fixed_labels": fl}))
    assert (got == []) is ok, got
    if ok:  # endpoint 10 is decimal here and written in hex, as the firmware reads it
        entries = device_info.entries(None, None, (device_info.FixedLabel(10, label, "v"),), None)
        assert entries[0] == ("fl-sz/a", "u32", 1)


@pytest.mark.parametrize(
    "mode",
    [
        {"endpoint": 1, "label": "x" * 65, "mode": 1},
        {"endpoint": 1, "label": "Eco", "mode": 256},
        {"endpoint": 70000, "label": "Eco", "mode": 1},
        {"endpoint": 1, "label": "Eco", "mode": 1, "tags": [{"value": 70000, "mfg_code": 0}]},
    ],
)
def test_11_supported_modes_are_validated(mode: dict[str, Any]) -> None:
    product = {"vendor_id": VID, "product_id": PID, "supported_modes": [mode]}
    assert errors(order(product=product))


@pytest.mark.parametrize("size", [0x1000, 0x2000, 0x1800])
def test_12_partition_below_three_pages_is_refused(size: int) -> None:
    got = errors(order(partition={"size": size}))
    assert any("partition.size" in e for e in got), got


def test_13_serial_limit_is_one_number_32() -> None:
    assert errors(order(devices=[{"serial_num": "S" * 32}])) == []
    assert errors(order(devices=[{"serial_num": "S" * 33}]))


def test_14_rd_id_uid_given_is_written_even_without_rotating_flag() -> None:
    uid = "00112233445566778899aabbccddeeff"
    wo = WorkOrder.model_validate(order(devices=[{"rd_id_uid": uid}]))
    (dev,) = allocate_chunk(wo, Claim(wo.order_id, 1, 1, 0, 1), 0)
    assert dev["rd_id_uid"] == uid  # not silently dropped


def test_15_overrides_reach_partition_and_codes_alike() -> None:
    # The tool's mcsv changes the NVS only; here one value feeds both.
    salt = base64.b64encode(bytes(range(16))).decode()
    verifier = base64.b64encode(spake2p.compute_verifier(20202021, bytes(range(16)), 1000))
    overrides = {"discriminator": 77, "passcode": 20202021, "salt": salt}
    wo = WorkOrder.model_validate(order(devices=[{**overrides, "verifier": verifier.decode()}]))
    assert wo.cross_field_errors() == []
    (dev,) = allocate_chunk(wo, Claim(wo.order_id, 1, 1, 0, 1), 0)
    assert (dev["discriminator"], dev["passcode"], dev["salt_b64"]) == (77, 20202021, salt)


@pytest.mark.parametrize("salt", [b"\x00\x01\x02", bytes(15), bytes(33)])
def test_16_salt_length_is_checked(salt: bytes) -> None:
    got = errors(order(devices=[{"salt": base64.b64encode(salt).decode()}]))
    assert any("16..32 bytes" in e for e in got), got


def test_16_verifier_must_match_passcode_and_salt() -> None:
    salt = bytes(range(16))
    wrong = spake2p.compute_verifier(20202022, salt, 1000)
    dev = {
        "passcode": 20202021,
        "salt": base64.b64encode(salt).decode(),
        "verifier": base64.b64encode(wrong).decode(),
    }
    assert errors(order(devices=[dev])) == [
        "devices[0].verifier: does not match passcode, salt and commissioning.iteration_count"
    ]


def test_18_secrets_come_from_the_os_csprng_not_random() -> None:
    # The tool draws passcodes and the NVS XTS key with Python's `random` (Mersenne Twister):
    # reseeding it would repeat them. Ours do not follow `random`'s state.
    draws = []
    for _ in range(2):
        random.seed(1234)
        draws.append(
            (
                identity.generate_passcode(),
                identity.generate_salt(32),
                identity.generate_rd_id_uid(16),
                nvs.generate_xts_keys(),
            )
        )
    first, second = draws
    assert all(a != b for a, b in zip(first, second, strict=True))
