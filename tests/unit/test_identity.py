"""Passcode, discriminator, salt and rotating-ID unique ID rules (matterfab.matter.identity)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.matter import identity as ident

TRIVIAL = [0, 11111111, 22222222, 33333333, 44444444, 55555555, 66666666, 77777777, 88888888,
           99999999, 12345678, 87654321]  # fmt: skip


def test_invalid_passcodes_constant_is_the_spec_list():
    assert frozenset(TRIVIAL) == ident.INVALID_PASSCODES


@pytest.mark.parametrize("passcode", [p for p in TRIVIAL if p <= ident.PASSCODE_MAX and p > 0])
def test_trivial_passcodes_rejected_naming_rule(passcode):
    with pytest.raises(InvalidInput) as exc:
        ident.validate_passcode(passcode)
    assert exc.value.field == "passcode"
    assert "trivial" in str(exc.value)


@pytest.mark.parametrize("passcode", [0, -1, 99999999, 100000000, 2**27])
def test_passcode_out_of_range_rejected(passcode):
    with pytest.raises(InvalidInput) as exc:
        ident.validate_passcode(passcode, field="devices[3].passcode")
    assert exc.value.field == "devices[3].passcode"


@pytest.mark.parametrize("passcode", [1, 20202021, 99999998, 11111112])
def test_valid_passcodes_accepted(passcode):
    assert ident.validate_passcode(passcode) == passcode


@pytest.mark.parametrize("value", [True, 2.0, "20202021", None])
def test_passcode_must_be_int(value):
    with pytest.raises(InvalidInput, match="integer"):
        ident.validate_passcode(value)


def test_generate_passcode_is_valid_and_varies():
    codes = {ident.generate_passcode() for _ in range(2000)}
    assert all(ident.validate_passcode(c) == c for c in codes)
    assert len(codes) > 1990  # 2000 draws from ~10**8 values: collisions are rare


def test_discriminator_range():
    assert ident.validate_discriminator(0) == 0
    assert ident.validate_discriminator(4095) == 4095
    for bad in (-1, 4096):
        with pytest.raises(InvalidInput) as exc:
            ident.validate_discriminator(bad)
        assert exc.value.field == "discriminator"
        assert "0..4095" in str(exc.value)


def test_discriminator_at_spreads_sequentially_and_wraps():
    assert [ident.discriminator_at(4094, i) for i in range(4)] == [4094, 4095, 0, 1]
    assert len({ident.discriminator_at(1234, i) for i in range(4096)}) == 4096
    with pytest.raises(InvalidInput) as exc:
        ident.discriminator_at(4096, 0)
    assert exc.value.field == "discriminator_base"
    with pytest.raises(InvalidInput) as exc:
        ident.discriminator_at(0, -1)
    assert exc.value.field == "offset"


@given(base=st.integers(0, 4095), offset=st.integers(0, 10**9))
def test_discriminator_at_property(base, offset):
    d = ident.discriminator_at(base, offset)
    assert 0 <= d <= 4095
    assert ident.discriminator_at(base, offset + 1) == (d + 1) % 4096


def test_salt_generation_and_validation():
    assert len(ident.generate_salt()) == 32
    assert len(ident.generate_salt(16)) == 16
    assert ident.generate_salt() != ident.generate_salt()
    assert ident.validate_salt(bytearray(16)) == bytes(16)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as exc:
        ident.validate_salt(bytes(15))
    assert exc.value.field == "salt"
    assert "16..32 bytes" in str(exc.value)
    with pytest.raises(InvalidInput):
        ident.validate_salt(bytes(33))
    with pytest.raises(InvalidInput):
        ident.validate_salt("0123456789abcdef")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as exc:
        ident.generate_salt(15)
    assert exc.value.field == "salt_length"


def test_rd_id_uid_generation_and_validation():
    uid = ident.generate_rd_id_uid()
    assert len(uid) == 16
    assert ident.validate_rd_id_uid(uid) == uid
    assert ident.generate_rd_id_uid() != uid
    assert len(ident.generate_rd_id_uid(32)) == 32
    with pytest.raises(InvalidInput) as exc:
        ident.validate_rd_id_uid(bytes(15))
    assert exc.value.field == "rd_id_uid"
    assert "128 bits" in str(exc.value)
    with pytest.raises(InvalidInput):
        ident.generate_rd_id_uid(8)
