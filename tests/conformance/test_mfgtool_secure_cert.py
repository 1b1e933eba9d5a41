"""Our esp_secure_cert partition and per-mode factory NVS against Espressif's tools.

For the same DAC, DAC key and PAI (and the same commissioning and product data):
1. `esp-matter-mfg-tool --dac-in-secure-cert` writes an esp_secure_cert.bin byte-identical to
   matterfab.matter.secure_cert.build_secure_cert, and an NVS partition byte-identical to ours
   for dac_storage "secure-cert" (same key set in its own partition.csv);
2. the tool run without --pai/--paa (modules that hold their DAC already) writes the NVS
   partition we build for dac_storage "on-module";
3. esp-secure-cert-tool's own TLV parser (esp_secure_cert.tlv_parser, run in the tool's venv)
   reads our image back: every CRC valid, the three entries equal to the inputs.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
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
    PRODUCT_ARGS,
    RD_ID_UID,
    SALT,
    VID,
    spake2p_verifier,
)

from matterfab.matter import nvs, secure_cert
from matterfab.matter.nvs import FactoryData, build_partition, factory_entries, factory_keys

DAC_KEYS = {"dac-cert", "dac-key", "dac-pub-key", "pai-cert"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mfgtool-secure-cert")


@pytest.fixture(scope="module")
def pki(workdir):
    return make_test_pki(workdir / "pki", VID, PID)


@pytest.fixture(scope="module")
def cd(workdir, pki) -> Path:
    path = vectors_dir() / "Chip-Test-CD-FFF1-8000-8063.der"
    if not path.exists():  # the tool stores the CD as an opaque blob: any DER will do
        path = workdir / "cd.der"
        path.write_bytes(pki.pai_der)
    return path


@pytest.fixture(scope="module")
def factory(pki, cd) -> FactoryData:
    return FactoryData(
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
        vendor_name="Acme Lighting",
        product_name="A19 Bulb",
        hardware_version=2,
        hardware_version_string="v2.1",
        serial_num="A19-00100001",
        mfg_date="2026-11-21",
        rd_id_uid=RD_ID_UID,
        part_number="A19-MTR-2",
        product_label="Acme A19 Smart Bulb",
        product_url="https://acme.example/a19",
        product_finish="matte",
        product_color="white",
    )


def _common_args(factory: FactoryData, cd: Path) -> list[str]:
    return [
        "--passcode", str(PASSCODE), "--discriminator", str(DISCRIMINATOR),
        "--salt", base64.b64encode(SALT).decode(),
        "--verifier", base64.b64encode(factory.verifier).decode(),
        "--iteration-count", str(ITERATIONS), "-cd", str(cd), *PRODUCT_ARGS,
    ]  # fmt: skip


def _run(workdir: Path, name: str, args: list[str]) -> Path:
    cwd = workdir / name
    cwd.mkdir()
    try:
        devices = device_outputs(run_mfgtool(args, cwd))
    except MfgToolMissing as exc:
        pytest.fail(str(exc))  # make test installs it: missing is a broken setup, not a skip
    assert len(devices) == 1, devices
    return devices[0]


@pytest.fixture(scope="module")
def tool_secure_cert(workdir, pki, factory, cd) -> Path:
    dac_args = [
        "--pai", "-c", str(pki.pai_pem),
        "--dac-cert", str(pki.dac_pem), "--dac-key", str(pki.dac_key_pem),
        "--dac-in-secure-cert",
    ]  # fmt: skip
    return _run(workdir, "secure-cert", [*_common_args(factory, cd), *dac_args])


@pytest.fixture(scope="module")
def tool_no_pai(workdir, factory, cd) -> Path:
    return _run(workdir, "no-pai", _common_args(factory, cd))


def _partition(device: Path) -> bytes:
    return (device / f"{device.name}-partition.bin").read_bytes()


def _tool_keys(device: Path) -> list[str]:
    with open(device / "internal" / "partition.csv", newline="") as f:
        return [row["key"] for row in csv.DictReader(f) if row["type"] != "namespace"]


def test_secure_cert_is_byte_identical_to_the_tools(tool_secure_cert, pki):
    tool = secure_cert_bin(tool_secure_cert).read_bytes()
    ours = secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw)
    assert ours == tool
    assert len(ours) % 16 == 0 and len(ours) < secure_cert.MAX_SIZE


def test_tool_secure_cert_reads_back_with_our_reader(tool_secure_cert, pki):
    read = secure_cert.read_secure_cert(secure_cert_bin(tool_secure_cert).read_bytes())
    assert (read.dac_cert, read.pai_cert, read.dac_key_raw) == (
        pki.dac_der,
        pki.pai_der,
        pki.dac_key_raw,
    )


def test_esp_secure_cert_tool_parses_ours(tmp_path, pki):
    """esp-secure-cert-tool's parser, not ours: CRCs valid, entries equal to the inputs."""
    image = tmp_path / "esp_secure_cert.bin"
    image.write_bytes(secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw))
    entries = parse_with_esp_secure_cert_tool(image)
    key_sec1 = serialization.load_pem_private_key(
        pki.dac_key_pem.read_bytes(), password=None
    ).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert [(e["type"], e["subtype"], e["flags"]) for e in entries] == [
        (1, 0, 0),
        (0, 0, 0),
        (2, 0, 0),
    ]
    assert all(e["crc_valid"] for e in entries)
    assert [e["data"] for e in entries] == [pki.dac_der, pki.pai_der, key_sec1]
    assert [e["length"] for e in entries] == [len(pki.dac_der), len(pki.pai_der), len(key_sec1)]


def test_esp_secure_cert_tool_flags_a_corrupted_crc(tmp_path, pki):
    """The parser's CRC check is seen to fail on a flipped byte: its "valid" means something."""
    image = bytearray(secure_cert.build_secure_cert(pki.dac_der, pki.pai_der, pki.dac_key_raw))
    image[40] ^= 0x01  # inside the DAC's data
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(image))
    entries = parse_with_esp_secure_cert_tool(path)
    assert [e["crc_valid"] for e in entries] == [False, True, True]


def test_secure_cert_nvs_key_set_equals_the_tools(tool_secure_cert, factory):
    data = dataclasses.replace(factory, dac_storage="secure-cert")
    ours = [key for _ns, key, _t, _v in factory_entries(data)]
    assert _tool_keys(tool_secure_cert) == ours
    assert not DAC_KEYS & set(ours)
    full = [key for _ns, key, _t, _v in factory_entries(factory)]
    assert set(full) - set(ours) == DAC_KEYS  # exactly the four, nothing else


def test_secure_cert_nvs_is_byte_identical_to_the_tools(tool_secure_cert, factory):
    data = dataclasses.replace(factory, dac_storage="secure-cert")
    assert build_partition(data).image == _partition(tool_secure_cert)


def test_on_module_nvs_equals_the_tools_without_pai(tool_no_pai, factory):
    # The module holds its DAC: the partition is built without one at all.
    data = dataclasses.replace(
        factory, dac_storage="on-module", dac_cert=b"", dac_key=b"", dac_pub_key=b"", pai_cert=b""
    )
    assert _tool_keys(tool_no_pai) == [key for _ns, key, _t, _v in factory_entries(data)]
    assert build_partition(data).image == _partition(tool_no_pai)
    assert set(_tool_keys(tool_no_pai)) <= set(factory_keys("on-module"))
    assert nvs.decode_partition(_partition(tool_no_pai)) == nvs.decode_partition(
        build_partition(data).image
    )
