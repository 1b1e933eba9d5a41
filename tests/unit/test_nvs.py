"""Unit tests of the factory NVS partition: layout, validation, encryption, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.matter import nvs
from matterfab.matter.nvs import (
    NAMESPACE,
    ExtraEntry,
    FactoryData,
    build_partition,
    decode_partition,
    entries_as_decoded,
    factory_entries,
    generate_xts_keys,
    keys_partition,
    validate_extra_entry,
    validate_partition_size,
)
from matterfab.matter.nvs_reader import xts_key_from_keys_partition
from matterfab.matter.product import (
    COLOR_NAMES,
    FINISH_NAMES,
    ProductColor,
    ProductFinish,
    parse_color,
    parse_finish,
)

# The key order esp-matter-mfg-tool 1.0.29 writes (chip_nvs.CHIP_NVS_MAP + add_optional_KVs)
# when every product option is given and --csv adds one chip-factory key.
TOOL_ORDER = [
    "discriminator", "iteration-count", "salt", "vendor-id", "vendor-name", "product-id",
    "product-name", "hardware-ver", "hw-ver-str", "mfg-date", "rd-id-uid", "product-finish",
    "product-color", "part-number", "serial-num", "dac-cert", "dac-key", "dac-pub-key",
    "pai-cert", "verifier", "cert-dclrn", "my-extra", "product-label", "product-url",
]  # fmt: skip


def _dac() -> tuple[bytes, bytes]:
    key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key.private_numbers().private_value.to_bytes(32, "big"), pub


DAC_KEY, DAC_PUB = _dac()
FULL = FactoryData(
    discriminator=3840,
    passcode=20202021,
    iteration_count=10000,
    salt=bytes(range(32)),
    verifier=hashlib.sha512(b"v").digest() + hashlib.sha256(b"v").digest() + b"\x01",
    dac_cert=b"\x30\x82" + bytes(range(256)) * 2,
    dac_key=DAC_KEY,
    dac_pub_key=DAC_PUB,
    pai_cert=b"\x30\x82" + bytes(reversed(range(256))) * 2,
    cert_dclrn=b"\x30\x81" + b"\xcd" * 230,
    vendor_id=0xFFF1,
    product_id=0x8000,
    vendor_name="Acme Lighting",
    product_name="A19 Bulb",
    hardware_version=2,
    hardware_version_string="v2.1",
    serial_num="A19-00100001",
    mfg_date="2026-11-21",
    rd_id_uid=bytes.fromhex("00112233445566778899aabbccddeeff"),
    part_number="A19-MTR-2",
    product_label="Acme A19 Smart Bulb",
    product_url="https://acme.example/a19",
    product_finish="matte",
    product_color="white",
    extra=(
        ExtraEntry("app", "region", "string", "EU"),
        ExtraEntry(NAMESPACE, "my-extra", "u32", 7),
        ExtraEntry("app", "cal-offset", "i32", -12),
        ExtraEntry("app", "blob", "hex2bin", "deadbeef"),
        ExtraEntry("app", "b64", "base64", "3q2+7w=="),
        ExtraEntry("cal", "gain", "u16", "0x1F"),
    ),
)
MINIMAL = dataclasses.replace(
    FULL,
    passcode=None,
    vendor_name=None,
    product_name=None,
    hardware_version=None,
    hardware_version_string=None,
    serial_num=None,
    mfg_date=None,
    rd_id_uid=None,
    part_number=None,
    product_label=None,
    product_url=None,
    product_finish=None,
    product_color=None,
    extra=(),
)


def test_chip_factory_keys_are_the_tools_in_the_tools_order():
    keys = [key for ns, key, _t, _v in factory_entries(FULL) if ns == NAMESPACE]
    assert keys == TOOL_ORDER


def test_entry_types_and_encodings_mirror_the_tool():
    got = {key: (kind, value) for ns, key, kind, value in factory_entries(FULL) if ns == NAMESPACE}
    assert got["discriminator"] == ("u32", 3840)
    assert got["iteration-count"] == ("u32", 10000)
    assert got["salt"] == ("string", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    assert got["verifier"][0] == "string" and len(got["verifier"][1]) == 132  # base64 of 97
    assert got["vendor-id"] == ("u32", 0xFFF1) and got["product-id"] == ("u32", 0x8000)
    assert got["hardware-ver"] == ("u32", 2)
    assert got["rd-id-uid"] == ("hex2bin", "00112233445566778899aabbccddeeff")
    assert got["product-finish"] == ("u32", 1)  # enum value, not the name
    assert got["product-color"] == ("u32", 14)
    assert got["dac-key"] == ("binary", DAC_KEY) and got["dac-pub-key"] == ("binary", DAC_PUB)
    assert got["mfg-date"] == ("string", "2026-11-21")
    for key in ("vendor-name", "product-name", "hw-ver-str", "serial-num", "part-number"):
        assert got[key][0] == "string"


def test_passcode_is_never_written():
    decoded = decode_partition(build_partition(FULL).image)
    assert all("pass" not in key and "pin" not in key for key in decoded[NAMESPACE])
    assert struct.pack("<I", 20202021) not in build_partition(FULL).image


def test_extra_namespaces_follow_chip_factory_in_first_seen_order():
    namespaces = list(dict.fromkeys(ns for ns, *_ in factory_entries(FULL)))
    assert namespaces == [NAMESPACE, "app", "cal"]
    app = [(k, t, v) for ns, k, t, v in factory_entries(FULL) if ns == "app"]
    assert app == [
        ("region", "string", "EU"),
        ("cal-offset", "i32", -12),
        ("blob", "hex2bin", "deadbeef"),
        ("b64", "base64", "3q2+7w=="),
    ]
    assert ("cal", "gain", "u16", 31) in factory_entries(FULL)  # integer literal normalised


def test_optional_fields_are_omitted_when_absent():
    keys = [key for _ns, key, _t, _v in factory_entries(MINIMAL)]
    assert keys == [
        "discriminator", "iteration-count", "salt", "vendor-id", "product-id", "dac-cert",
        "dac-key", "dac-pub-key", "pai-cert", "verifier", "cert-dclrn",
    ]  # fmt: skip


@pytest.mark.parametrize("data", [FULL, MINIMAL], ids=["full", "minimal"])
def test_decode_round_trip(data):
    image = build_partition(data).image
    assert len(image) == 0x6000
    assert decode_partition(image) == entries_as_decoded(factory_entries(data))


def test_decoded_values_have_nvs_types():
    decoded = decode_partition(build_partition(FULL).image)
    assert decoded[NAMESPACE]["product-color"] == ("u32", 14)
    assert decoded[NAMESPACE]["serial-num"] == ("string", "A19-00100001")
    assert decoded[NAMESPACE]["dac-cert"] == ("blob", FULL.dac_cert)
    assert decoded["app"]["cal-offset"] == ("i32", -12)
    assert decoded["app"]["b64"] == ("blob", bytes.fromhex("deadbeef"))


def test_builds_are_deterministic():
    assert build_partition(FULL).image == build_partition(FULL).image
    key = bytes(range(64))
    first, second = build_partition(FULL, xts_key=key), build_partition(FULL, xts_key=key)
    assert first == second


def test_encrypted_partition_decodes_with_its_keys_only():
    key = generate_xts_keys()
    built = build_partition(FULL, xts_key=key)
    assert built.keys is not None and len(built.keys) == 4096
    assert decode_partition(built.image, keys=built.keys) == decode_partition(
        build_partition(FULL).image
    )
    for plaintext in (b"A19-00100001", b"Acme Lighting", FULL.dac_key, b"chip-factory"):
        assert plaintext not in built.image
    with pytest.raises(InvalidInput):
        decode_partition(built.image)  # ciphertext fails the entry CRCs
    with pytest.raises(InvalidInput):
        decode_partition(built.image, keys=keys_partition(generate_xts_keys()))


def test_encryption_depends_on_the_key():
    a = build_partition(FULL, xts_key=bytes(range(64))).image
    b = build_partition(FULL, xts_key=bytes(range(1, 65))).image
    assert a != b and a[:64] == b[:64]  # page header and bitmap stay in clear


def test_keys_partition_layout():
    key = generate_xts_keys()
    part = keys_partition(key)
    assert part[:64] == key
    assert struct.unpack_from("<I", part, 64)[0] == zlib.crc32(key, 0xFFFFFFFF)
    assert part[68:] == b"\xff" * (4096 - 68)
    assert xts_key_from_keys_partition(part) == key
    corrupted = bytearray(part)
    corrupted[3] ^= 1
    with pytest.raises(InvalidInput):
        xts_key_from_keys_partition(bytes(corrupted))


def test_xts_keys_come_from_secrets(monkeypatch):
    calls = []

    def fake(n):
        calls.append(n)
        return bytes(range(n))

    monkeypatch.setattr(nvs.secrets, "token_bytes", fake)
    assert generate_xts_keys() == bytes(range(64)) and calls == [64]


def test_generated_xts_keys_differ():
    keys = {generate_xts_keys() for _ in range(20)}
    assert len(keys) == 20 and all(len(k) == 64 for k in keys)


@pytest.mark.parametrize("key", [b"\x00" * 63, b"\x11" * 64])
def test_bad_xts_keys_are_rejected(key):
    with pytest.raises(InvalidInput) as err:
        build_partition(FULL, xts_key=key)
    assert err.value.field == "partition.xts_key"


@pytest.mark.parametrize(
    ("entry", "field", "rule"),
    [
        (ExtraEntry("app", "k" * 16, "u8", 1), "e.key", "at most 15"),
        (ExtraEntry("n" * 16, "k", "u8", 1), "e.namespace", "at most 15"),
        (ExtraEntry("app", "", "u8", 1), "e.key", "non-empty"),
        (ExtraEntry("app", "ké", "u8", 1), "e.key", "ASCII"),
        (ExtraEntry("app", "k", "i16", 1), "e.type", "must be one of"),
        (ExtraEntry("app", "k", "i8", 128), "e.value", "-128..127"),
        (ExtraEntry("app", "k", "u64", 1 << 64), "e.value", "0..18446744073709551615"),
        (ExtraEntry("app", "k", "i64", -(1 << 63) - 1), "e.value", "-9223372036854775808"),
        (ExtraEntry("app", "k", "binary", "!!!"), "e.value", "base64"),
        (ExtraEntry("app", "k", "u8", 256), "e.value", "0..255"),
        (ExtraEntry("app", "k", "u8", -1), "e.value", "0..255"),
        (ExtraEntry("app", "k", "u16", 0x10000), "e.value", "0..65535"),
        (ExtraEntry("app", "k", "u32", 1 << 32), "e.value", "0..4294967295"),
        (ExtraEntry("app", "k", "i32", 1 << 31), "e.value", "-2147483648..2147483647"),
        (ExtraEntry("app", "k", "i32", "twelve"), "e.value", "integer"),
        (ExtraEntry("app", "k", "u8", True), "e.value", "integer"),
        (ExtraEntry("app", "k", "string", 5), "e.value", "must be a string"),
        (ExtraEntry("app", "k", "string", "a\0b"), "e.value", "NUL"),
        (ExtraEntry("app", "k", "string", "x" * 4000), "e.value", "at most"),
        (ExtraEntry("app", "k", "hex2bin", "abc"), "e.value", "even number"),
        (ExtraEntry("app", "k", "hex2bin", "zz"), "e.value", "hex digits"),
        (ExtraEntry("app", "k", "base64", "!!!"), "e.value", "base64"),
    ],
)
def test_invalid_extra_entries(entry, field, rule):
    with pytest.raises(InvalidInput) as err:
        validate_extra_entry(entry, "e")
    assert err.value.field == field
    assert rule in str(err.value)


def test_valid_extra_entries_pass():
    for entry in FULL.extra:
        validate_extra_entry(entry, "e")
    validate_extra_entry(ExtraEntry("app", "k" * 15, "i32", "-0x10"), "e")


def test_extra_may_not_repeat_or_shadow_a_factory_key():
    twice = (ExtraEntry("app", "k", "u8", 1), ExtraEntry("app", "k", "u8", 2))
    shadow = (ExtraEntry(NAMESPACE, "serial-num", "string", "X"),)
    for extra in (twice, shadow):
        with pytest.raises(InvalidInput, match="duplicates key"):
            build_partition(dataclasses.replace(FULL, extra=extra))


@pytest.mark.parametrize("size", [0x2000, 0x3001, 0x5800, 0x2000000, True, "0x6000"])
def test_invalid_partition_sizes(size):
    with pytest.raises(InvalidInput) as err:
        validate_partition_size(size)
    assert err.value.field == "partition.size"


@pytest.mark.parametrize("size", [0x3000, 0x6000, 0x10000])
def test_valid_partition_sizes(size):
    validate_partition_size(size)
    assert len(build_partition(MINIMAL, size).image) == size


def test_too_small_partition_names_the_size_needed():
    big = dataclasses.replace(
        FULL, extra=tuple(ExtraEntry("app", f"k{i}", "hex2bin", "ab" * 1500) for i in range(12))
    )
    with pytest.raises(InvalidInput) as err:
        build_partition(big, 0x6000)
    assert err.value.field == "partition.size"
    message = str(err.value)
    assert "needs at least" in message
    needed = int(message.split("needs at least ")[1].split(" ")[0], 16)
    assert needed > 0x6000
    assert decode_partition(build_partition(big, needed).image)["app"]["k11"][0] == "blob"
    with pytest.raises(InvalidInput):
        build_partition(big, needed - 0x1000)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"discriminator": 4096}, "discriminator"),
        ({"iteration_count": 999}, "iteration_count"),
        ({"salt": b"s" * 15}, "salt"),
        ({"verifier": b"v" * 96}, "verifier"),
        ({"dac_key": b"k" * 31}, "dac_key"),
        ({"dac_pub_key": b"\x02" + b"p" * 64}, "dac_pub_key"),
        ({"vendor_id": 0x10000}, "vendor_id"),
        ({"hardware_version": -1}, "hardware_version"),
        ({"vendor_name": "v" * 33}, "vendor_name"),
        ({"product_url": "u" * 257}, "product_url"),
        ({"serial_num": ""}, "serial_num"),
        ({"mfg_date": "2026-02-30"}, "mfg_date"),
        ({"mfg_date": "20261131"}, "mfg_date"),
        ({"mfg_date": "2026-11-21ABC"}, "mfg_date"),
        ({"rd_id_uid": b"r" * 15}, "rd_id_uid"),
        ({"product_finish": "Matte"}, "product_finish"),
        ({"product_color": "pink"}, "product_color"),
        ({"extra": (ExtraEntry("app", "k", "u8", 300),)}, "extra[0].value"),
    ],
)
def test_invalid_factory_data(change, field):
    with pytest.raises(InvalidInput) as err:
        build_partition(dataclasses.replace(FULL, **change))
    assert field in [e.field for e in err.value.errors]


def test_all_broken_rules_are_reported_together():
    with pytest.raises(InvalidInput) as err:
        build_partition(dataclasses.replace(FULL, discriminator=-1, salt=b"", vendor_name=""))
    assert {e.field for e in err.value.errors} >= {"discriminator", "salt", "vendor_name"}


def test_product_enums_match_the_spec():
    assert list(FINISH_NAMES) == ["other", "matte", "satin", "polished", "rugged", "fabric"]
    assert [(c.name, c.value) for c in ProductColor][:3] == [
        ("black", 0),
        ("navy", 1),
        ("green", 2),
    ]
    assert len(COLOR_NAMES) == 21 and ProductColor.gold == 20 and ProductColor.white == 14
    assert parse_finish("fabric") is ProductFinish.fabric
    assert parse_color("silver") is ProductColor.silver
    with pytest.raises(InvalidInput, match="must be one of"):
        parse_color("Silver")
    with pytest.raises(InvalidInput) as err:
        parse_finish("glossy", "product.product_finish")
    assert err.value.field == "product.product_finish"


def test_decoder_rejects_bad_images():
    image = build_partition(FULL).image
    for bad in (b"", image[:100], image + b"\xff"):
        with pytest.raises(InvalidInput):
            decode_partition(bad)
    header = bytearray(image)
    header[4] ^= 1  # sequence number: header CRC breaks
    with pytest.raises(InvalidInput, match="header CRC"):
        decode_partition(bytes(header))


ENTRY_AREA = range(64, 4096)


@settings(max_examples=150, deadline=None)
@given(offset=st.sampled_from(ENTRY_AREA), flip=st.integers(1, 255))
def test_corruption_is_detected_or_harmless(offset, flip):
    """A flipped byte in the first page is caught by a CRC, or lands in unused space."""
    image = bytearray(build_partition(FULL).image)
    image[offset] ^= flip
    try:
        decoded = decode_partition(bytes(image))
    except InvalidInput:
        return
    assert decoded == decode_partition(build_partition(FULL).image)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=15)
_extra = st.one_of(
    st.builds(lambda n, k, v: ExtraEntry(n, k, "u8", v), _names, _names, st.integers(0, 255)),
    st.builds(lambda n, k, v: ExtraEntry(n, k, "u16", v), _names, _names, st.integers(0, 65535)),
    st.builds(
        lambda n, k, v: ExtraEntry(n, k, "u32", v), _names, _names, st.integers(0, 2**32 - 1)
    ),
    st.builds(
        lambda n, k, v: ExtraEntry(n, k, "i32", v), _names, _names, st.integers(-(2**31), 2**31 - 1)
    ),
    st.builds(
        lambda n, k, v: ExtraEntry(n, k, "string", v),
        _names,
        _names,
        st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=300),
    ),
    st.builds(
        lambda n, k, v: ExtraEntry(n, k, "hex2bin", v.hex()),
        _names,
        _names,
        st.binary(max_size=600),
    ),
)


@settings(max_examples=60, deadline=None)
@given(extra=st.lists(_extra, max_size=12, unique_by=lambda e: (e.namespace, e.key)))
def test_any_valid_extras_round_trip(extra):
    extra = [
        e for e in extra if (e.namespace, e.key) not in {(NAMESPACE, k) for k in nvs.FACTORY_KEYS}
    ]
    data = dataclasses.replace(FULL, extra=tuple(extra))
    image = build_partition(data, 0x10000).image
    assert decode_partition(image) == entries_as_decoded(factory_entries(data))


# dac_storage modes: which keys each partition holds (FIELDS' modes column).

DAC_KEYS = ("dac-cert", "dac-key", "dac-pub-key", "pai-cert")
NO_DAC = dataclasses.replace(FULL, dac_cert=b"", dac_key=b"", dac_pub_key=b"", pai_cert=b"")


@pytest.mark.parametrize("mode", ["secure-cert", "on-module"])
def test_dac_storage_modes_leave_out_exactly_the_dac_keys(mode):
    source = FULL if mode == "secure-cert" else NO_DAC
    data = dataclasses.replace(source, dac_storage=mode)
    keys = [k for ns, k, _t, _v in factory_entries(data) if ns == NAMESPACE]
    assert keys == [k for k in TOOL_ORDER if k not in DAC_KEYS]
    assert nvs.factory_keys(mode) == tuple(k for k in nvs.FACTORY_KEYS if k not in DAC_KEYS)


def test_factory_nvs_is_the_default_and_holds_every_key():
    assert FULL.dac_storage == "factory-nvs"
    assert nvs.factory_keys() == nvs.FACTORY_KEYS == tuple(f.key for f in nvs.FIELDS)
    assert (
        build_partition(FULL).image
        == build_partition(dataclasses.replace(FULL, dac_storage="factory-nvs")).image
    )


def test_secure_cert_partition_decodes_without_the_dac():
    image = build_partition(dataclasses.replace(FULL, dac_storage="secure-cert")).image
    assert not set(DAC_KEYS) & set(decode_partition(image)[NAMESPACE])
    assert DAC_KEY not in image


def test_on_module_needs_no_dac_but_factory_nvs_does():
    build_partition(dataclasses.replace(NO_DAC, dac_storage="on-module"))
    with pytest.raises(InvalidInput) as info:
        build_partition(NO_DAC)
    fields = {e.field for e in info.value.errors}
    assert fields == {"dac_cert", "dac_key", "dac_pub_key", "pai_cert"}


def test_unknown_dac_storage_is_a_field_error():
    with pytest.raises(InvalidInput) as info:
        build_partition(dataclasses.replace(FULL, dac_storage="in-the-cloud"))  # type: ignore[arg-type]
    assert [(e.field, e.message) for e in info.value.errors] == [
        ("dac_storage", "must be one of factory-nvs, secure-cert, on-module, device-key")
    ]


def test_modes_match_the_work_order_field():
    from typing import get_args

    from matterfab.messages.work_order import DacStorage

    assert nvs.DAC_STORAGE_MODES == get_args(DacStorage)


def test_extras_may_not_reuse_a_dac_key_even_where_the_mode_leaves_it_out():
    extra = (ExtraEntry(NAMESPACE, "dac-cert", "hex2bin", "00"),)
    with pytest.raises(InvalidInput) as info:
        build_partition(dataclasses.replace(NO_DAC, dac_storage="on-module", extra=extra))
    assert info.value.errors[0].field == "extra[0].key"


def test_a_lone_surrogate_is_a_field_error_not_a_crash():
    # json.loads accepts "\ud800"; UTF-8 cannot encode it, so it must be refused by name.
    with pytest.raises(InvalidInput) as info:
        validate_extra_entry(ExtraEntry("app", "k", "string", "a\ud800"), "extra_entries[0]")
    assert [(e.field, e.message) for e in info.value.errors] == [
        ("extra_entries[0].value", "must be valid Unicode (no lone surrogate code points)")
    ]
