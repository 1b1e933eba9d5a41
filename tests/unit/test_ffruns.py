"""ff-runs/1 (matterfab/ffruns.py): known answers, round trips on any bytes and on the real
images the builder seals, and a clear error for every malformed body (never a larger image)."""

from __future__ import annotations

import dataclasses
import secrets
import struct
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab import ffruns
from matterfab.matter import attestation, device, identity, nvs, pki

FF = b"\xff"
RUN = ffruns.MIN_RUN


def seg(run: int, literal: bytes = b"") -> bytes:
    return struct.pack(">II", run, len(literal)) + literal


# (image, its encoding): the format written out by hand.
VECTORS = [
    (b"", b""),
    (b"abc", seg(0, b"abc")),
    (FF * RUN, seg(RUN)),
    (FF * (RUN - 1), seg(0, FF * (RUN - 1))),  # one short of the threshold: literal
    (b"a" + FF * RUN + b"b", seg(0, b"a") + seg(RUN, b"b")),
    (FF * 20 + b"xy" + FF * 30, seg(20, b"xy") + seg(30)),
    (b"x" + FF * (RUN - 1) + b"y" + FF * 100, seg(0, b"x" + FF * (RUN - 1) + b"y") + seg(100)),
    (FF * 0x6000, seg(0x6000)),
]


@pytest.mark.parametrize(("image", "encoded"), VECTORS)
def test_known_answers(image: bytes, encoded: bytes) -> None:
    assert ffruns.encode(image) == encoded
    assert ffruns.decode(encoded, len(image)) == image
    assert ffruns.decoded_size(encoded, len(image)) == len(image)


def _round_trip(image: bytes) -> None:
    body = ffruns.encode(image)
    assert ffruns.decode(body, len(image)) == image
    assert ffruns.encode(image) == body  # deterministic
    assert ffruns.decoded_size(body, len(image)) == len(image)
    # Every run of MIN_RUN or more is elided: what is left never holds one.
    assert len(body) <= len(image) + 8


# Images as flash holds them: stretches of data and of erased 0xFF, of every length around the
# threshold, at the start, middle and end.
_run = st.integers(0, 3 * RUN).map(lambda n: FF * n) | st.integers(RUN, 5000).map(lambda n: FF * n)
_data = st.binary(min_size=0, max_size=64)
flash_like = st.lists(_run | _data, max_size=20).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_round_trip_any_bytes(image: bytes) -> None:
    _round_trip(image)


@settings(max_examples=300, deadline=None)
@given(flash_like)
def test_round_trip_flash_like(image: bytes) -> None:
    _round_trip(image)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3 * RUN), st.integers(0, 3 * RUN), st.binary(min_size=1, max_size=40))
def test_runs_at_the_edges(head: int, tail: int, middle: bytes) -> None:
    """Runs at the very start and end, each shorter than, at or past the threshold."""
    image = FF * head + middle + FF * tail
    _round_trip(image)
    body = ffruns.encode(image)
    if head >= RUN and not middle.startswith(FF):
        assert body.startswith(struct.pack(">I", head))
    if tail >= RUN and not middle.endswith(FF):
        assert body.endswith(struct.pack(">II", tail, 0))


def test_all_ff_and_empty() -> None:
    for n in (0, 1, RUN - 1, RUN, RUN + 1, 0x6000):
        _round_trip(FF * n)
    assert ffruns.encode(b"") == b""
    assert ffruns.decode(b"", 0) == b""


# ------------------------------------------------------------------ real images the builder seals
VID, PID = 0xFFF1, 0x8000


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Each dac_storage mode's partition (factory-nvs also XTS-encrypted, with its keys
    partition) and the secure-cert image, as `device.build_device` makes them."""
    paa, paa_key = pki.make_paa("ffruns PAA", VID)
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID)
    now = datetime.now(UTC).replace(microsecond=0)
    dac = attestation.issue_dac(
        pai_cert=pai,
        signer=attestation.InMemorySigner(pai_key),
        vendor_id=VID,
        product_id=PID,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=365),
    )
    base = nvs.FactoryData(
        discriminator=0xF00,
        iteration_count=1000,
        salt=identity.generate_salt(),
        verifier=b"",
        dac_cert=dac.der,
        dac_key=dac.private_key_raw,
        dac_pub_key=dac.public_key_raw,
        pai_cert=pai.public_bytes(Encoding.DER),
        cert_dclrn=secrets.token_bytes(240),
        vendor_id=VID,
        product_id=PID,
        vendor_name="Acme",
        product_name="Bulb",
        serial_num="S00000001",
        mfg_date="2026-11-21",
        rd_id_uid=identity.generate_rd_id_uid(),
    )
    out = {}
    for mode in nvs.DAC_STORAGE_MODES:
        f = dataclasses.replace(base, dac_storage=mode)
        if mode in nvs.NO_DAC_AT_BUILD:
            f = dataclasses.replace(f, dac_cert=b"", dac_key=b"", dac_pub_key=b"", pai_cert=b"")
        for xts in (None, nvs.generate_xts_keys()) if mode == "factory-nvs" else (None,):
            inputs = device.DeviceInputs(f, 20202021, "standard", ("ble",), 0x6000, xts_key=xts)
            art = device.build_device(inputs)
            name = mode + ("+xts" if xts else "")
            out[f"{name} partition.bin"] = art.partition
            if art.nvs_keys is not None:
                out[f"{name} nvs_keys.bin"] = art.nvs_keys
            if art.secure_cert is not None:
                out[f"{name} esp_secure_cert.bin"] = art.secure_cert
    return out


def test_real_images_round_trip(images: dict[str, bytes]) -> None:
    assert {"secure-cert esp_secure_cert.bin", "factory-nvs+xts nvs_keys.bin"} <= set(images)
    for name, image in images.items():
        body = ffruns.encode(image)
        assert ffruns.decode(body, len(image)) == image, name
        assert ffruns.encode(image) == body, name
        if name.endswith("partition.bin"):
            # The point of it: a 24 KB partition is mostly erased flash (issue #26).
            assert len(body) < len(image) // 6, (name, len(body))


# ------------------------------------------------------------------ malformed bodies
MALFORMED = [
    (seg(0, b"abc")[:-1], 3, "truncated literal"),
    (seg(0, b"abc")[:5], 3, "truncated segment header"),
    (seg(4, b"ab") + b"\x00\x00\x00", 6, "trailing bytes"),
    (seg(3) + seg(1)[:4], 5, "truncated segment header"),
    (seg(0), 0, "trailing bytes"),
    (seg(0) + seg(3), 3, "empty segment"),
    (seg(7), 6, "runs past the 6-byte image"),
    (seg(2, b"abcde"), 6, "runs past the 6-byte image"),
    (seg(0xFFFF_FFFF), 24, "runs past the 24-byte image"),  # a bomb: never allocated
    (seg(0xFFFF_FFFF, b"") + seg(0xFFFF_FFFF), 1 << 20, "runs past"),
    (seg(3, b"ab"), 6, "decodes to 5 bytes, not 6"),
    (b"", 1, "decodes to 0 bytes, not 1"),
    (seg(4) + seg(4), 4, "trailing bytes"),
]


@pytest.mark.parametrize(("body", "size", "rule"), MALFORMED)
def test_malformed_bodies_are_clear_errors(body: bytes, size: int, rule: str) -> None:
    with pytest.raises(ffruns.MalformedRuns, match=rule):
        ffruns.decode(body, size)


def test_decoded_size_refuses_what_it_cannot_bound() -> None:
    assert ffruns.decoded_size(seg(10, b"ab") + seg(4), 100) == 16
    for body, rule in [
        (seg(0xFFFF_FFFF), "more than 1024 bytes"),
        (seg(600) + seg(600), "more than 1024 bytes"),
        (seg(0), "empty segment"),
        (seg(1, b"abc")[:-1], "truncated literal"),
        (seg(1)[:7], "truncated segment header"),
    ]:
        with pytest.raises(ffruns.MalformedRuns, match=rule):
            ffruns.decoded_size(body, 1024)
