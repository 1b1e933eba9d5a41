"""The parity fields of issue #24 against esp-matter-mfg-tool 1.0.29, byte for byte.

For the same inputs, the tool (its own venv) and matterfab write:
1. the same NVS partition with the device-information lists (`--calendar-types`, `--locales`,
   `--fixed-labels`, `--supported-modes`), the new extra-entry encodings (i8, u64, i64 and a
   `file`/binary entry) and a `YYYYMMDD` + suffix mfg-date;
2. the same QR and manual codes with the NFC (16) and Thread (32) discovery bits;
3. the same NVS partition with a dynamic passcode (no verifier), using the salt the tool drew;
4. the same esp_secure_cert entries with commissionable data and the rotating device ID in TLV
   201 (except the tool's random 201/128 and 201/129, which no firmware reads), and the same
   NVS partition without them;
5. with an ECDSA-peripheral key, the same SEC_CFG, DAC and PAI entries, and a PRIV_KEY entry
   with the same flags (0x08) but without the key bytes the tool leaves in.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
from pathlib import Path

import pytest
from mfgtool import (
    MfgToolMissing,
    device_outputs,
    make_test_pki,
    parse_with_esp_secure_cert_tool,
    run_mfgtool,
    secure_cert_bin,
    vectors_dir,
)
from test_mfgtool_equivalence import (
    DISCRIMINATOR,
    ITERATIONS,
    PASSCODE,
    PID,
    RD_ID_UID,
    SALT,
    VID,
    spake2p_verifier,
)

from matterfab.matter import device, device_info, nvs, payload, secure_cert
from matterfab.matter.device_info import FixedLabel, SemanticTag, SupportedMode
from matterfab.matter.nvs import NAMESPACE, ExtraEntry, FactoryData, build_partition
from matterfab.matter.secure_cert import TlvType

BLOB = bytes(range(7, 47))  # the bytes of the `file`/binary extra entry
EXTRA = (
    ExtraEntry(NAMESPACE, "my-i8", "i8", -100),
    ExtraEntry("app", "big", "u64", 0xFEDCBA9876543210),
    ExtraEntry("app", "neg", "i64", -0x7000000000000001),
    ExtraEntry("app", "cfg", "binary", base64.b64encode(BLOB).decode()),
)
CALENDARS = ("gregorian", "hebrew", "japanese")
LOCALES = ("en-US", "de-DE", "fr-FR")
LABELS = (
    FixedLabel(0, "orientation", "up"),
    FixedLabel(1, "room", "kitchen"),
    FixedLabel(10, "floor", "2"),
    FixedLabel(1, "zone", "north-east-16ch"),  # 15 characters: the tool's own limit
)
MODES = (
    SupportedMode(1, "Low", 0, (SemanticTag(1, 0x8000), SemanticTag(2, 0x8001))),
    SupportedMode(1, "High", 1),
    SupportedMode(2, "Eco", 5, (SemanticTag(7, 0),)),
)
MFG_DATE = "20250416ABCDEFGH"  # YYYYMMDD + 8-character vendor suffix, stored as given
BASE_ARGS = [
    "-v", hex(VID), "-p", hex(PID), "--vendor-name", "Parity Vendor",
    "--product-name", "Parity Prod", "--hw-ver", "3", "--hw-ver-str", "rev-C",
    "--serial-num", "SN-PARITY-1", "--part-number", "PN-123",
    "--product-label", "Label X", "--product-url", "https://example.com/p",
    "--iteration-count", str(ITERATIONS), "-s", "0x6000",
]  # fmt: skip


def _tool_lists() -> list[str]:
    modes = []
    for m in MODES:
        text = f"{m.mode}/{m.label}/{m.endpoint}"
        if m.tags:
            text += "/" + ", ".join(f"{t.value}\\{t.mfg_code:#x}" for t in m.tags)
        modes.append(text)
    return [
        "--calendar-types", *(c.capitalize() for c in CALENDARS),
        "--locales", *LOCALES,
        "--fixed-labels", *(f"{f.endpoint}/{f.label}/{f.value}" for f in LABELS),
        "--supported-modes", *modes,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mfgtool-parity")


@pytest.fixture(scope="module")
def pki(workdir):
    return make_test_pki(workdir / "pki", VID, PID)


@pytest.fixture(scope="module")
def cd(workdir, pki) -> Path:
    path = vectors_dir() / "Chip-Test-CD-FFF1-8000-8063.der"
    if not path.exists():
        path = workdir / "cd.der"
        path.write_bytes(pki.pai_der)
    return path


def _factory(pki, cd: Path, **changes) -> FactoryData:
    base = FactoryData(
        discriminator=DISCRIMINATOR,
        iteration_count=ITERATIONS,
        salt=SALT,
        verifier=spake2p_verifier(PASSCODE, SALT, ITERATIONS),
        dac_cert=pki.dac_der,
        dac_key=pki.dac_key_raw,
        dac_pub_key=pki.dac_pub_raw,
        pai_cert=pki.pai_der,
        cert_dclrn=cd.read_bytes(),
        vendor_id=VID,
        product_id=PID,
        vendor_name="Parity Vendor",
        product_name="Parity Prod",
        hardware_version=3,
        hardware_version_string="rev-C",
        serial_num="SN-PARITY-1",
        part_number="PN-123",
        product_label="Label X",
        product_url="https://example.com/p",
    )
    return dataclasses.replace(base, **changes)


def _fixed_args(pki, cd: Path) -> list[str]:
    """Fixed commissionable data and an imported DAC: nothing random left in NVS."""
    return [
        "--passcode", str(PASSCODE), "--discriminator", str(DISCRIMINATOR),
        "--salt", base64.b64encode(SALT).decode(),
        "--verifier", base64.b64encode(spake2p_verifier(PASSCODE, SALT, ITERATIONS)).decode(),
        "--pai", "-c", str(pki.pai_pem),
        "--dac-cert", str(pki.dac_pem), "--dac-key", str(pki.dac_key_pem),
        "-cd", str(cd), *BASE_ARGS,
    ]  # fmt: skip


def _extra_csv_args(folder: Path) -> list[str]:
    schema, values, current = [], {}, None
    for e in EXTRA:
        if e.namespace != current:
            schema.append(f"{e.namespace},namespace,")
            current = e.namespace
        if e.type == "binary":
            (folder / "cfg.bin").write_bytes(BLOB)
            schema.append(f"{e.key},file,binary")
            values[e.key] = str(folder / "cfg.bin")
        else:
            schema.append(f"{e.key},data,{e.type}")
            values[e.key] = str(e.value)
    (folder / "extra.csv").write_text("\n".join(schema) + "\n")
    (folder / "extra_values.csv").write_text(",".join(values) + "\n" + ",".join(values.values()))
    return ["--csv", str(folder / "extra.csv"), "--mcsv", str(folder / "extra_values.csv")]


def _run(workdir: Path, name: str, args: list[str], extra: bool = False) -> Path:
    cwd = workdir / name
    cwd.mkdir()
    try:
        devices = device_outputs(run_mfgtool(args + (_extra_csv_args(cwd) if extra else []), cwd))
    except MfgToolMissing as exc:
        pytest.fail(str(exc))  # make test installs it: missing is a broken setup, not a skip
    assert len(devices) == 1, devices
    return devices[0]


def _partition(device_dir: Path) -> bytes:
    return (device_dir / f"{device_dir.name}-partition.bin").read_bytes()


def _tool_keys(device_dir: Path) -> list[str]:
    with open(device_dir / "internal" / "partition.csv", newline="") as f:
        return [row["key"] for row in csv.DictReader(f) if row["type"] != "namespace"]


def _onb_codes(device_dir: Path) -> tuple[str, str]:
    with open(device_dir / f"{device_dir.name}-onb_codes.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return row["qrcode"], row["manualcode"]


# 1. Device-information lists, new extra encodings, mfg-date form ----------------------------


@pytest.fixture(scope="module")
def tool_devinfo(workdir, pki, cd) -> Path:
    args = [*_fixed_args(pki, cd), "--mfg-date", MFG_DATE, *_tool_lists()]
    return _run(workdir, "devinfo", args, extra=True)


def _devinfo_factory(pki, cd) -> FactoryData:
    return _factory(
        pki,
        cd,
        mfg_date=MFG_DATE,
        calendar_types=CALENDARS,
        locales=LOCALES,
        fixed_labels=LABELS,
        supported_modes=MODES,
        extra=EXTRA,
    )


def test_device_info_keys_in_the_tools_order(tool_devinfo, pki, cd):
    ours = [key for _ns, key, _t, _v in nvs.factory_entries(_devinfo_factory(pki, cd))]
    assert _tool_keys(tool_devinfo) == ours
    assert ours.index("my-i8") < ours.index("cal-types") < ours.index("product-label")


def test_device_info_partition_is_byte_identical(tool_devinfo, pki, cd):
    assert build_partition(_devinfo_factory(pki, cd)).image == _partition(tool_devinfo)


def test_device_info_values_decode_as_the_reference_lists(tool_devinfo):
    ns = nvs.decode_partition(_partition(tool_devinfo))[NAMESPACE]
    assert ns["cal-types"] == ("u32", 304)  # 16 + 32 + 256 (reference §1e)
    assert ns["locale/2"] == ("string", "fr-FR")
    assert ns["fl-sz/a"] == ("u32", 1)  # endpoint 10, in hex
    assert ns["fl-sz/1"] == ("u32", 2)
    assert ns["st-mfg/1/0/1"] == ("u32", 0x8001)
    assert ns["mfg-date"] == ("string", MFG_DATE)
    app = nvs.decode_partition(_partition(tool_devinfo))["app"]
    assert app["cfg"] == ("blob", BLOB)
    assert app["big"] == ("u64", 0xFEDCBA9876543210)
    assert app["neg"] == ("i64", -0x7000000000000001)


def test_device_info_entries_table():
    """The entries of the lists alone, as the reference's run r1 lists them."""
    got = device_info.entries(("gregorian", "gregorian"), None, None, None)
    assert got == [("cal-types", "u32", 16)]


# 2. QR and manual codes with the NFC and Thread bits -----------------------------------------


@pytest.mark.parametrize(
    ("dm", "names", "flow"),
    [
        (16, ("nfc",), "standard"),
        (32, ("thread",), "user-intent"),
        (50, ("ble", "nfc", "thread"), "custom"),
        (62, ("ble", "on-network", "wifi-paf", "nfc", "thread"), "standard"),
    ],
)
def test_codes_with_nfc_and_thread_bits(workdir, dm, names, flow):
    cf = {"standard": 0, "user-intent": 1, "custom": 2}[flow]
    args = [
        "--passcode", str(PASSCODE), "--discriminator", str(DISCRIMINATOR),
        "-dm", str(dm), "-cf", str(cf), *BASE_ARGS,
    ]  # fmt: skip
    tool = _run(workdir, f"dm-{dm}", args)
    ours = device.onboarding_codes(VID, PID, flow, names, DISCRIMINATOR, PASSCODE)
    qr, manual = _onb_codes(tool)
    # The tool prints the manual code grouped (DDDD-DDD-DDDD, a second line for 21 digits).
    assert (qr, manual.replace("-", "").replace("\n", "")) == ours
    assert payload.decode_qr(qr).discovery == dm


# 3. Dynamic passcode ------------------------------------------------------------------------


def test_dynamic_passcode_partition_is_byte_identical(workdir, pki, cd):
    args = [
        "--enable-dynamic-passcode", "--discriminator", str(DISCRIMINATOR),
        "--pai", "-c", str(pki.pai_pem),
        "--dac-cert", str(pki.dac_pem), "--dac-key", str(pki.dac_key_pem),
        "-cd", str(cd), *BASE_ARGS,
    ]  # fmt: skip
    tool = _run(workdir, "dynamic", args)
    assert not (tool / f"{tool.name}-onb_codes.csv").exists()
    # The tool draws the salt itself even here (reference §3): take it from its partition.
    salt = base64.b64decode(nvs.decode_partition(_partition(tool))[NAMESPACE]["salt"][1])
    inputs = device.DeviceInputs(
        factory=_factory(pki, cd, salt=salt, verifier=b""),
        passcode=PASSCODE,
        flow="standard",
        discovery=("ble",),
        partition_size=0x6000,
        dynamic_passcode=True,
    )
    built = device.build_device(inputs)
    assert built.partition == _partition(tool)
    assert "verifier" not in nvs.decode_partition(built.partition)[NAMESPACE]
    assert (built.qr_payload, built.manual_code, built.qrcode_png) == ("", "", b"")


# 4. Commissionable data and rd-id-uid in the secure cert -------------------------------------


@pytest.fixture(scope="module")
def tool_sc_all(workdir, pki, cd) -> Path:
    args = [
        *_fixed_args(pki, cd),
        "--dac-in-secure-cert", "--commissionable-data-in-secure-cert",
        "--rd-id-uid-in-secure-cert", "--enable-rotating-device-id",
        "--rd-id-uid", RD_ID_UID.hex(),
    ]  # fmt: skip
    return _run(workdir, "sc-all", args)


def _sc_all_inputs(pki, cd) -> device.DeviceInputs:
    return device.DeviceInputs(
        factory=_factory(
            pki,
            cd,
            verifier=b"",
            dac_storage="secure-cert",
            rd_id_uid=RD_ID_UID,
            commissionable_in_secure_cert=True,
            rd_id_uid_in_secure_cert=True,
        ),
        passcode=PASSCODE,
        flow="standard",
        discovery=("ble",),
        partition_size=0x6000,
    )


def test_commissionable_secure_cert_equals_the_tools_but_its_random_entries(tool_sc_all, pki, cd):
    tool = secure_cert.decode_entries(secure_cert_bin(tool_sc_all).read_bytes())
    randoms = [e for e in tool if e.type == TlvType.MATTER and e.subtype in (128, 129)]
    assert [len(e.data) for e in randoms] == [32, 32]  # what we leave out, and why: module doc
    built = device.build_device(_sc_all_inputs(pki, cd))
    assert built.secure_cert is not None
    assert secure_cert.decode_entries(built.secure_cert) == [e for e in tool if e not in randoms]
    # Without the random entries the bytes are the tool's up to where they start.
    assert secure_cert_bin(tool_sc_all).read_bytes().startswith(built.secure_cert)


def test_commissionable_secure_cert_nvs_is_byte_identical(tool_sc_all, pki, cd):
    built = device.build_device(_sc_all_inputs(pki, cd))
    assert built.partition == _partition(tool_sc_all)
    keys = set(nvs.decode_partition(built.partition)[NAMESPACE])
    assert not keys & (nvs.COMMISSIONABLE_KEYS | {"rd-id-uid"})


def test_esp_secure_cert_tool_parses_our_matter_entries(tmp_path, pki, cd):
    built = device.build_device(_sc_all_inputs(pki, cd))
    assert built.secure_cert is not None
    path = tmp_path / "sc.bin"
    path.write_bytes(built.secure_cert)
    entries = parse_with_esp_secure_cert_tool(path)
    assert [(e["type"], e["subtype"]) for e in entries] == [
        (1, 0), (0, 0), (2, 0), (201, 0), (201, 1), (201, 2), (201, 3), (201, 4),
    ]  # fmt: skip
    assert all(e["crc_valid"] for e in entries)


# 5. ECDSA peripheral ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_ds(workdir, pki, cd) -> Path:
    args = [
        *_fixed_args(pki, cd),
        "--dac-in-secure-cert", "-ds", "--efuse-key-id", "1", "--target", "esp32h2",
    ]  # fmt: skip
    return _run(workdir, "ds-h2", args)


def test_ecdsa_peripheral_secure_cert_equals_the_tools_without_the_key(tool_ds, pki):
    tool = secure_cert.decode_entries(secure_cert_bin(tool_ds).read_bytes())
    ours = secure_cert.decode_entries(
        secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw, efuse_key_id=1)
    )
    assert [(e.type, e.subtype, e.flags) for e in ours] == [
        (e.type, e.subtype, e.flags) for e in tool
    ]
    assert ours[:3] == tool[:3]  # SEC_CFG [05, 0 x 39], DAC, PAI: identical
    assert ours[0].data == bytes([5]) + bytes(39)
    assert tool[3].flags == ours[3].flags == secure_cert.FLAGS_ECDSA_PERIPHERAL
    assert len(tool[3].data) == 121  # the tool leaves the whole key in (reference §4 bug 5)
    assert ours[3].data == b""  # nothing reads it in this mode: left out
    read = secure_cert.read_secure_cert(
        secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw, efuse_key_id=1)
    )
    assert (read.efuse_block, read.dac_key_raw) == (5, None)


def test_ecdsa_peripheral_nvs_is_byte_identical(tool_ds, pki, cd):
    data = _factory(pki, cd, dac_storage="secure-cert")
    assert build_partition(data).image == _partition(tool_ds)


def test_esp_secure_cert_tool_parses_our_ecdsa_peripheral_image(tmp_path, pki):
    path = tmp_path / "ds.bin"
    path.write_bytes(
        secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw, efuse_key_id=3)
    )
    entries = parse_with_esp_secure_cert_tool(path)
    assert [(e["type"], e["flags"], e["length"]) for e in entries] == [
        (6, 0, 40), (1, 0, len(pki.dac_der)), (0, 0, len(pki.pai_der)), (2, 8, 0),
    ]  # fmt: skip
    assert all(e["crc_valid"] for e in entries)
