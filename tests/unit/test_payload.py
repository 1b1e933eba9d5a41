"""QR payload and manual pairing code codecs (matterfab.matter.payload)."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import verhoeff

from matterfab.errors import InvalidInput
from matterfab.matter import payload as pl
from matterfab.matter.identity import INVALID_PASSCODES
from matterfab.matter.payload import (
    CommissioningFlow,
    Discovery,
    ManualCode,
    SetupPayload,
    decode_manual,
    decode_qr,
    encode_manual,
    encode_qr,
)

DEFAULT = SetupPayload(
    0xFFF1, 0x8001, CommissioningFlow.STANDARD, Discovery.ON_NETWORK, 3840, 20202021
)
DEFAULT_QR = "MT:-24J0AFN00KA0648G00"


def _qr_from_fields(**fields: int) -> str:
    """Pack raw field values (even forbidden ones) the way encode_qr does."""
    packed, shift = 0, 0
    for name, width in pl._QR_LAYOUT:
        packed |= fields.get(name, 0) << shift
        shift += width
    return pl.QR_PREFIX + pl._base38_encode(packed.to_bytes(11, "little"))


def _with_check_digit(digits: str) -> str:
    return digits + verhoeff.calc_check_digit(digits)


# --- strategies --------------------------------------------------------------------------------

passcodes = st.integers(1, 99999998).filter(lambda p: p not in INVALID_PASSCODES)
payloads = st.builds(
    SetupPayload,
    vendor_id=st.integers(0, 0xFFFF),
    product_id=st.integers(0, 0xFFFF),
    flow=st.sampled_from(list(CommissioningFlow)),
    discovery=st.integers(0, 0xF).map(Discovery),
    discriminator=st.integers(0, 4095),
    passcode=passcodes,
)


# --- QR ----------------------------------------------------------------------------------------


def test_known_default_payload():
    assert encode_qr(DEFAULT) == DEFAULT_QR
    assert decode_qr(DEFAULT_QR) == DEFAULT


@given(payloads)
def test_qr_round_trip(p):
    text = encode_qr(p)
    assert text.startswith("MT:")
    assert len(text) == 22
    assert set(text[3:]) <= set(pl.BASE38_ALPHABET)
    assert decode_qr(text) == p


def test_decoded_fields_are_enums():
    p = decode_qr(DEFAULT_QR)
    assert type(p.flow) is CommissioningFlow
    assert type(p.discovery) is Discovery


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("XT:-24J0AFN00KA0648G00", "must start with 'MT:'"),
        ("mt:-24J0AFN00KA0648G00", "must start with 'MT:'"),
        ("MT:-24J0AFN00KA0648G0", "19 Base38 characters"),
        ("MT:-24J0AFN00KA0648G000", "19 Base38 characters"),
        ("MT:-24J0AFN00KA0648G00*MT:-24J0AFN00KA0648G00", "concatenated"),
        ("MT:-24J0aFN00KA0648G00", "not a Base38 character"),
        ("MT:-24J0_FN00KA0648G00", "not a Base38 character"),
        ("MT:.....AFN00KA0648G00", "overflows 3 bytes"),
        ("MT:-24J0AFN00KA0648...", "overflows 2 bytes"),
    ],
)
def test_bad_qr_text_names_field_and_rule(text, rule):
    with pytest.raises(InvalidInput) as exc:
        decode_qr(text)
    assert exc.value.field == "qr_payload"
    assert rule in str(exc.value)


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"padding": 1}, "padding bits must be 0"),
        ({"version": 1}, "version must be 0"),
        ({"flow": 3}, "flow must be 0, 1 or 2"),
        ({"discovery": 0x40}, "discovery must only use bits 0..5"),
        ({"passcode": 12345678}, "passcode must not be one of the trivial"),
        ({"passcode": 99999999 + 1}, "passcode must be in 1..99999998"),
        ({"passcode": 0}, "passcode must be in 1..99999998"),
    ],
)
def test_qr_with_forbidden_field_values_rejected(fields, rule):
    base = {"passcode": 20202021, "discovery": 4} | fields
    with pytest.raises(InvalidInput) as exc:
        decode_qr(_qr_from_fields(**base))
    assert exc.value.field == "qr_payload"
    assert rule in str(exc.value)


def test_field_packing_sanity_against_layout():
    # The passcode sits in bits 57..83 (bytes 7..10, Base38 chunks 3 and 4): changing only it
    # leaves the first two chunks (10 characters after "MT:") alone.
    a = encode_qr(DEFAULT)
    b = encode_qr(replace(DEFAULT, passcode=20202022))
    assert a[:13] == b[:13]
    assert a != b
    assert sum(w for _, w in pl._QR_LAYOUT) == 88


def test_setup_payload_construction_collects_all_errors():
    with pytest.raises(InvalidInput) as exc:
        SetupPayload(0x10000, -1, 3, 0x100, 4096, 0)  # type: ignore[arg-type]
    fields = {e.field for e in exc.value.errors}
    assert fields == {"vendor_id", "product_id", "flow", "discovery", "discriminator", "passcode"}


def test_setup_payload_rejects_version_1():
    with pytest.raises(InvalidInput) as exc:
        SetupPayload(1, 1, 0, 4, 0, 20202021, version=1)  # type: ignore[arg-type]
    assert exc.value.field == "version"


# --- manual code -------------------------------------------------------------------------------


def test_manual_known_short_code():
    assert encode_manual(DEFAULT) == "34970112332"
    assert decode_manual("34970112332") == ManualCode(15, 20202021, None, None, False)


def test_manual_long_code_carries_vid_pid():
    p = SetupPayload(0xFFF1, 0x8001, CommissioningFlow.USER_INTENT, Discovery.BLE, 3840, 20202021)
    code = encode_manual(p)
    assert len(code) == 21
    assert decode_manual(code) == ManualCode(15, 20202021, 0xFFF1, 0x8001, True)


@given(payloads)
def test_manual_round_trip(p):
    code = encode_manual(p)
    assert code.isdigit()
    assert len(code) == (11 if p.flow == CommissioningFlow.STANDARD else 21)
    got = decode_manual(code)
    assert got.short_discriminator == p.discriminator >> 8
    assert got.passcode == p.passcode
    assert got.flow_long == (p.flow != CommissioningFlow.STANDARD)
    if got.flow_long:
        assert (got.vendor_id, got.product_id) == (p.vendor_id, p.product_id)
    else:
        assert got.vendor_id is None and got.product_id is None


def test_manual_accepts_dashes_and_spaces():
    assert decode_manual("3497-011-2332").passcode == 20202021
    assert decode_manual("3497 0112 332").passcode == 20202021


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("34970112333", "Verhoeff check digit"),
        ("34970112323", "Verhoeff check digit"),  # adjacent transposition
        ("3497011233", "11 or 21 digits"),
        ("349701123321", "11 or 21 digits"),
        ("3497011233a", "only digits"),
        ("", "11 or 21 digits"),
    ],
)
def test_bad_manual_code_names_field_and_rule(code, rule):
    with pytest.raises(InvalidInput) as exc:
        decode_manual(code)
    assert exc.value.field == "manual_code"
    assert rule in str(exc.value)


@pytest.mark.parametrize(
    ("digits", "rule"),
    [
        ("8497011233", "first digit must be 0..7"),
        ("7497011233", "announces 21 digits"),
        ("34970112330000100001", "announces 11 digits"),
        ("3999991233", "digits 2-6 must be at most 65535"),
        ("3000000000", "passcode must be in 1..99999998"),
        ("3576780753", "passcode must not be one of the trivial"),  # 12345678
        ("74970112339999900001", "vendor ID must be at most 65535"),
        ("74970112330000199999", "product ID must be at most 65535"),
    ],
)
def test_manual_code_with_forbidden_content(digits, rule):
    with pytest.raises(InvalidInput) as exc:
        decode_manual(_with_check_digit(digits))
    assert exc.value.field == "manual_code"
    assert rule in str(exc.value)


# --- IDs and discovery names -------------------------------------------------------------------


def test_vendor_and_product_id_rules():
    assert pl.validate_vendor_id(0xFFF1) == 0xFFF1
    assert pl.validate_vendor_id(0xFFF4) == 0xFFF4
    assert pl.validate_product_id(0xFFFF) == 0xFFFF
    for bad in (0, 0xFFF5, 0x10000):
        with pytest.raises(InvalidInput) as exc:
            pl.validate_vendor_id(bad)
        assert exc.value.field == "vendor_id"
    with pytest.raises(InvalidInput) as exc:
        pl.validate_product_id(0, field="orders[0].product_id")
    assert exc.value.field == "orders[0].product_id"
    assert "0 is reserved" in str(exc.value)


def test_discovery_names():
    assert Discovery.from_names(["ble", "on-network"]) == Discovery.BLE | Discovery.ON_NETWORK
    assert Discovery.from_names(["soft-ap", "wifi-paf"]) == 0b1001
    assert Discovery.from_names([]) == 0
    assert Discovery(7).names == ["soft-ap", "ble", "on-network"]
    assert Discovery.from_names(["nfc", "thread"]) == 0b110000
    with pytest.raises(InvalidInput) as exc:
        Discovery.from_names(["ble", "zigbee"])
    assert exc.value.field == "discovery"
    assert "'zigbee'" in str(exc.value)


def test_short_discriminator():
    assert pl.short_discriminator(3840) == 15
    assert pl.short_discriminator(255) == 0
    with pytest.raises(InvalidInput):
        pl.short_discriminator(4096)
