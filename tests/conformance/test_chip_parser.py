"""Our codes against the Matter SDK's own setup-payload code (home-assistant-chip-core wheel).

For random valid devices: our QR text and manual code must equal what the SDK generates, and
the SDK's parser must read every field back from our text. The SDK library is loaded without
`chip.native.Init()` (that starts the whole controller stack); payload parsing and generation
do not need it. Importing `chip` needs Debian's libnl-3-200 and libnl-route-3-200 (`make apt`):
if it cannot load, these tests fail rather than skip.
"""

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from matterfab.matter.identity import INVALID_PASSCODES, PASSCODE_MAX
from matterfab.matter.payload import (
    VENDOR_ID_MAX,
    CommissioningFlow,
    Discovery,
    SetupPayload,
    encode_manual,
    encode_qr,
)
from tests.chip_sdk import chip_setup_payload

DEVICES = 1000
# The wheel's generator (2025.7) predates the NFC and Thread bits and refuses them (its parser
# reads them): those bits are checked by parsing below, and against esp-matter-mfg-tool in
# test_mfgtool_parity.py.
SDK_GENERATES = Discovery.SOFT_AP | Discovery.BLE | Discovery.ON_NETWORK | Discovery.WIFI_PAF
SEED = int(os.environ.get("MATTERFAB_CHIP_SEED", "20250701"))


@pytest.fixture(scope="module")
def chip_payload() -> Iterator[Any]:
    """A chip SetupPayload whose native handle is used without stack initialisation."""
    with chip_setup_payload() as payload:
        yield payload


def _random_devices(n: int, seed: int) -> list[SetupPayload]:
    rng = random.Random(seed)
    devices: list[SetupPayload] = []
    while len(devices) < n:
        passcode = rng.randint(1, PASSCODE_MAX)
        if passcode in INVALID_PASSCODES:
            continue
        devices.append(
            SetupPayload(
                vendor_id=rng.randint(1, VENDOR_ID_MAX),
                product_id=rng.randint(1, 0xFFFF),
                flow=rng.choice(list(CommissioningFlow)),
                discovery=Discovery(rng.randint(1, 0xF)),
                discriminator=rng.randint(0, 4095),
                passcode=passcode,
            )
        )
    return devices


def test_sdk_parses_our_codes_and_generates_the_same(chip_payload):
    devices = _random_devices(DEVICES, SEED)
    # Cover every flow and every discovery bit, so the sample cannot silently miss a branch.
    assert {d.flow for d in devices} == set(CommissioningFlow)
    assert all(any(d.discovery & bit for d in devices) for bit in SDK_GENERATES)
    started = time.perf_counter()
    for d in devices:
        qr, manual = encode_qr(d), encode_manual(d)
        args = (d.passcode, d.vendor_id, d.product_id, d.discriminator, d.flow, d.discovery, 0)
        assert chip_payload.GenerateQrCode(*args) == qr, d
        assert chip_payload.GenerateManualPairingCode(*args) == manual, d

        parsed = chip_payload.ParseQrCode(qr)
        assert parsed.version == 0, qr
        assert parsed.vendor_id == d.vendor_id, qr
        assert parsed.product_id == d.product_id, qr
        assert parsed.commissioning_flow == d.flow, qr
        assert parsed.rendezvous_information == d.discovery, qr
        assert parsed.long_discriminator == d.discriminator, qr
        assert parsed.short_discriminator is None, qr
        assert parsed.setup_passcode == d.passcode, qr

        parsed = chip_payload.ParseManualPairingCode(manual)
        assert parsed.short_discriminator == d.discriminator >> 8, manual
        assert parsed.long_discriminator is None, manual
        assert parsed.setup_passcode == d.passcode, manual
        if d.flow == CommissioningFlow.STANDARD:
            assert (parsed.vendor_id, parsed.product_id) == (0, 0), manual
        else:
            assert (parsed.vendor_id, parsed.product_id) == (d.vendor_id, d.product_id), manual
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"{DEVICES} devices took {elapsed:.1f} s through the SDK"


@pytest.mark.parametrize("bits", [Discovery.NFC, Discovery.THREAD, Discovery(0b110110)])
def test_sdk_parses_our_nfc_and_thread_bits(chip_payload, bits):
    d = SetupPayload(
        vendor_id=0xFFF1,
        product_id=0x8000,
        flow=CommissioningFlow.STANDARD,
        discovery=bits,
        discriminator=3840,
        passcode=20202021,
    )
    parsed = chip_payload.ParseQrCode(encode_qr(d))
    assert parsed.rendezvous_information == bits
    assert (parsed.long_discriminator, parsed.setup_passcode) == (3840, 20202021)
