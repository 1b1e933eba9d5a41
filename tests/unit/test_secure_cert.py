"""Unit tests of the esp_secure_cert TLV image: layout, known answer, round trip, bad input."""

from __future__ import annotations

import struct
import zlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.matter import secure_cert
from matterfab.matter.secure_cert import TlvEntry, TlvType

KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
KEY_RAW = KEY.private_numbers().private_value.to_bytes(32, "big")
DAC = b"\x30\x82" + bytes(range(256)) * 2  # the image does not parse certificates
PAI = b"\x30\x81" + bytes(range(100))


def test_one_entry_layout_by_hand():
    image = secure_cert.encode_entries([TlvEntry(TlvType.DEV_CERT, 0, 0, b"abc")])
    header = struct.pack("<IB3sBBH", 0xBA5EBA11, 0, b"\0\0\0", 1, 0, 3)
    body = header + b"abc" + b"\0" * 13  # data padded to 16
    assert image == body + struct.pack("<I", zlib.crc32(body, 0xFFFFFFFF))
    assert len(image) == 12 + 16 + 4


def test_known_answer_header_bytes():
    image = secure_cert.encode_entries([TlvEntry(TlvType.PRIV_KEY, 0, 0, b"")])
    assert image[:12].hex() == "11ba5eba0000000002000000"
    assert len(image) == 16  # empty data, no padding


def test_build_order_types_and_key_form():
    image = secure_cert.build_secure_cert(DAC, PAI, KEY_RAW)
    entries = secure_cert.decode_entries(image)
    assert [(e.type, e.subtype, e.flags) for e in entries] == [(1, 0, 0), (0, 0, 0), (2, 0, 0)]
    assert entries[0].data == DAC and entries[1].data == PAI
    assert entries[2].data == KEY.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_read_back_and_determinism():
    image = secure_cert.build_secure_cert(DAC, PAI, KEY_RAW)
    assert image == secure_cert.build_secure_cert(DAC, PAI, KEY_RAW)
    read = secure_cert.read_secure_cert(image)
    assert (read.dac_cert, read.pai_cert, read.dac_key_raw) == (DAC, PAI, KEY_RAW)


def test_reader_stops_at_erased_flash():
    image = secure_cert.build_secure_cert(DAC, PAI, KEY_RAW)
    padded = image + b"\xff" * (secure_cert.MAX_SIZE - len(image))
    assert secure_cert.read_secure_cert(padded) == secure_cert.read_secure_cert(image)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300)
        ),
        max_size=6,
    )
)
def test_round_trip_any_entries(raw):
    entries = [TlvEntry(*r) for r in raw]
    image = secure_cert.encode_entries(entries)
    assert secure_cert.decode_entries(image) == entries
    assert len(image) % 16 == 0


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0, "magic"),  # the first byte of the magic
        (5, "reserved header bytes are not zero"),
        (20, "CRC32 mismatch"),  # inside the DAC data
    ],
)
def test_corruption_is_named(offset, message):
    image = bytearray(secure_cert.build_secure_cert(DAC, PAI, KEY_RAW))
    image[offset] ^= 0x01
    with pytest.raises(InvalidInput) as info:
        secure_cert.read_secure_cert(bytes(image))
    assert info.value.errors[0].field == "secure_cert"
    assert message in info.value.errors[0].message
    assert "offset 0x0" in info.value.errors[0].message


def test_truncated_image_is_rejected():
    image = secure_cert.build_secure_cert(DAC, PAI, KEY_RAW)
    with pytest.raises(InvalidInput, match="runs past the image"):
        secure_cert.decode_entries(image[:-1])


def test_missing_and_repeated_entries():
    only_certs = secure_cert.encode_entries(
        [TlvEntry(TlvType.DEV_CERT, 0, 0, DAC), TlvEntry(TlvType.CA_CERT, 0, 0, PAI)]
    )
    with pytest.raises(InvalidInput, match="lacks the PRIV_KEY entry"):
        secure_cert.read_secure_cert(only_certs)
    twice = secure_cert.encode_entries([TlvEntry(TlvType.DEV_CERT, 0, 0, DAC)] * 2)
    with pytest.raises(InvalidInput, match="DEV_CERT appears twice"):
        secure_cert.read_secure_cert(twice)


def test_non_plaintext_key_is_refused():
    entries = secure_cert.decode_entries(secure_cert.build_secure_cert(DAC, PAI, KEY_RAW))
    entries[2] = TlvEntry(TlvType.PRIV_KEY, 0, 0x40, entries[2].data)  # HMAC-derived
    with pytest.raises(InvalidInput, match="not plaintext"):
        secure_cert.read_secure_cert(secure_cert.encode_entries(entries))


@pytest.mark.parametrize(
    ("dac", "pai", "key", "field"),
    [
        (b"", PAI, KEY_RAW, "dac_cert"),
        (DAC, b"", KEY_RAW, "pai_cert"),
        (DAC, PAI, KEY_RAW[:31], "dac_key"),
        (DAC, PAI, b"\0" * 32, "dac_key"),  # zero is not a private scalar
        (DAC, PAI, b"\xff" * 32, "dac_key"),  # above the group order
    ],
)
def test_bad_inputs_name_the_field(dac, pai, key, field):
    with pytest.raises(InvalidInput) as info:
        secure_cert.build_secure_cert(dac, pai, key)
    assert info.value.errors[0].field == field


def test_too_big_for_the_partition():
    with pytest.raises(InvalidInput) as info:
        secure_cert.build_secure_cert(b"\x30" * 5000, b"\x30" * 4000, KEY_RAW)
    assert info.value.errors[0].field == "secure_cert"
    assert "0x2000" in info.value.errors[0].message
