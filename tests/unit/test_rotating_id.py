"""Rotating device ID (matterfab.matter.rotating_id)."""

import hashlib

import pytest

from matterfab.errors import InvalidInput
from matterfab.matter.rotating_id import ROTATING_ID_LEN, rotating_device_id

UID = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_sdk_vector_counter_10():
    # connectedhomeip src/setup_payload/tests/TestAdditionalDataPayload.cpp, kRotatingDeviceId
    assert rotating_device_id(UID, 10).hex().upper() == "0A00D00561E77A68A9FD975057375B9283A8"


def test_layout_counter_le_then_sha256_suffix():
    rid = rotating_device_id(UID * 2, 0x1234)
    assert len(rid) == ROTATING_ID_LEN == 18
    assert rid[:2] == b"\x34\x12"
    assert rid[2:] == hashlib.sha256(UID * 2 + b"\x34\x12").digest()[16:]


def test_counter_changes_id():
    assert rotating_device_id(UID, 1)[2:] != rotating_device_id(UID, 2)[2:]


@pytest.mark.parametrize("counter", [-1, 65536, True])
def test_bad_counter(counter):
    with pytest.raises(InvalidInput) as exc:
        rotating_device_id(UID, counter)
    assert exc.value.field == "counter"


def test_short_unique_id_rejected():
    with pytest.raises(InvalidInput) as exc:
        rotating_device_id(UID[:15], 0)
    assert exc.value.field == "rd_id_uid"
