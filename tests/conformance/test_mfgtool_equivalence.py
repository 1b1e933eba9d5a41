"""Our factory partition against Espressif's esp-matter-mfg-tool 1.0.29, for the same inputs.

Three independent views of the tool's output are compared with ours:
1. the tool's own statement of what it wrote (internal/partition.csv: key, type, encoding,
   value in order) against factory_entries — no decoder involved;
2. the raw partition bytes (plain and encrypted with the tool's generated key);
3. both partitions decoded by matterfab.matter.nvs_reader, plus the encrypted image
   decrypted by esp-idf-nvs-partition-gen's own `decrypt` (not our code).
No NVS parser other than ours is published on PyPI (checked: esp-idf-nvs-tool does not exist;
ESP-IDF's nvs_tool.py ships only inside ESP-IDF), so (1) and (2) carry the independence.
"""

from __future__ import annotations

import base64
import csv
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from esp_idf_nvs_partition_gen import nvs_partition_gen
from mfgtool import MfgToolMissing, device_outputs, make_test_pki, run_mfgtool, vectors_dir

from matterfab.matter.nvs import (
    NAMESPACE,
    ExtraEntry,
    FactoryData,
    build_partition,
    decode_partition,
    entries_as_decoded,
    factory_entries,
    keys_partition,
)
from matterfab.matter.nvs_reader import xts_key_from_keys_partition

VID, PID = 0xFFF1, 0x8000
PASSCODE, DISCRIMINATOR, ITERATIONS = 20202021, 3840, 10000
SALT = bytes(range(32))
RD_ID_UID = bytes.fromhex("00112233445566778899aabbccddeeff")
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Extra entries given to the tool as --csv (schema) + --mcsv (values), like a work order's
# extra_entries: one key in chip-factory, the rest in namespace "app".
EXTRA = (
    ExtraEntry(NAMESPACE, "my-extra", "u32", 7),
    ExtraEntry("app", "region", "string", "EU"),
    ExtraEntry("app", "cal-offset", "i32", -12),
    ExtraEntry("app", "level", "u8", 200),
    ExtraEntry("app", "gain", "u16", 4000),
    ExtraEntry("app", "blob", "hex2bin", "deadbeef00ff"),
    ExtraEntry("app", "b64", "base64", "3q2+7w=="),
)
PRODUCT_ARGS = [
    "-v", hex(VID), "-p", hex(PID), "--vendor-name", "Acme Lighting",
    "--product-name", "A19 Bulb", "--hw-ver", "2", "--hw-ver-str", "v2.1",
    "--serial-num", "A19-00100001", "--mfg-date", "2026-11-21",
    "--enable-rotating-device-id", "--rd-id-uid", RD_ID_UID.hex(),
    "--part-number", "A19-MTR-2", "--product-label", "Acme A19 Smart Bulb",
    "--product-url", "https://acme.example/a19", "--product-finish", "matte",
    "--product-color", "white", "-s", "0x6000",
]  # fmt: skip


def spake2p_verifier(passcode: int, salt: bytes, iterations: int) -> bytes:
    """Matter spec §3.10 verifier w0 ‖ L, computed here so the tool's own check validates it."""
    ws = hashlib.pbkdf2_hmac("sha256", passcode.to_bytes(4, "little"), salt, iterations, 80)
    w0 = int.from_bytes(ws[:40], "big") % P256_ORDER
    w1 = int.from_bytes(ws[40:], "big") % P256_ORDER
    big_l = (
        ec.derive_private_key(w1, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return w0.to_bytes(32, "big") + big_l


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mfgtool")


@pytest.fixture(scope="module")
def inputs(workdir):
    """PKI files, CD and the FactoryData equal to what the tool is told."""
    pki = make_test_pki(workdir / "pki", VID, PID)
    cd = vectors_dir() / "Chip-Test-CD-FFF1-8000-8063.der"
    if not cd.exists():  # the tool stores the CD as an opaque blob: any DER will do
        cd = workdir / "cd.der"
        cd.write_bytes(pki.pai_der)
    data = FactoryData(
        discriminator=DISCRIMINATOR,
        passcode=PASSCODE,
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
        extra=EXTRA,
    )
    args = [
        "--passcode", str(PASSCODE), "--discriminator", str(DISCRIMINATOR),
        "--salt", base64.b64encode(SALT).decode(),
        "--verifier", base64.b64encode(data.verifier).decode(),
        "--iteration-count", str(ITERATIONS),
        "--pai", "-c", str(pki.pai_pem),
        "--dac-cert", str(pki.dac_pem), "--dac-key", str(pki.dac_key_pem),
        "-cd", str(cd), *PRODUCT_ARGS,
    ]  # fmt: skip
    return SimpleNamespace(pki=pki, data=data, args=args)


def _extra_csv_args(folder: Path) -> list[str]:
    schema, values, current = [], {}, None
    for e in EXTRA:
        if e.namespace != current:
            schema.append(f"{e.namespace},namespace,")
            current = e.namespace
        schema.append(f"{e.key},data,{e.type}")
        values[e.key] = str(e.value)
    (folder / "extra.csv").write_text("\n".join(schema) + "\n")
    (folder / "extra_values.csv").write_text(",".join(values) + "\n" + ",".join(values.values()))
    return ["--csv", str(folder / "extra.csv"), "--mcsv", str(folder / "extra_values.csv")]


def _run(workdir: Path, name: str, args: list[str]) -> Path:
    try:
        cwd = workdir / name
        cwd.mkdir()
        devices = device_outputs(run_mfgtool(args + _extra_csv_args(cwd), cwd))
    except MfgToolMissing as exc:
        pytest.fail(str(exc))  # make test installs it: missing is a broken setup, not a skip
    assert len(devices) == 1, devices
    return devices[0]


@pytest.fixture(scope="module")
def tool_plain(workdir, inputs) -> Path:
    return _run(workdir, "plain", inputs.args)


@pytest.fixture(scope="module")
def tool_encrypted(workdir, inputs) -> Path:
    return _run(workdir, "encrypted", [*inputs.args, "-e"])


def _partition(device: Path) -> bytes:
    return (device / f"{device.name}-partition.bin").read_bytes()


def _tool_csv(device: Path) -> list[tuple[str, str, str, object]]:
    """internal/partition.csv as (namespace, key, encoding, value), files read as bytes."""
    rows, namespace = [], ""
    with open(device / "internal" / "partition.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["type"] == "namespace":
                namespace = row["key"]
                continue
            value: object = row["value"]
            if row["type"] == "file":
                path = Path(row["value"])
                value = (path if path.is_absolute() else device.parents[2] / path).read_bytes()
            rows.append((namespace, row["key"], row["encoding"], value))
    return rows


def test_tool_writes_exactly_our_entries_in_our_order(tool_plain, inputs):
    ours = [(ns, k, t, v if isinstance(v, bytes) else str(v)) for ns, k, t, v in
            factory_entries(inputs.data)]  # fmt: skip
    assert _tool_csv(tool_plain) == ours


def test_tool_output_folder_is_the_dac_uuid(tool_plain, inputs):
    assert tool_plain.name == inputs.pki.dac_uuid


def test_partitions_are_byte_identical(tool_plain, inputs):
    assert build_partition(inputs.data).image == _partition(tool_plain)


def test_decoded_partitions_are_equal(tool_plain, inputs):
    tool = decode_partition(_partition(tool_plain))
    ours = decode_partition(build_partition(inputs.data).image)
    assert tool == ours == entries_as_decoded(factory_entries(inputs.data))
    assert set(tool) == {NAMESPACE, "app"}
    assert tool[NAMESPACE]["product-finish"] == ("u32", 1)
    assert tool[NAMESPACE]["salt"] == ("string", base64.b64encode(SALT).decode())
    assert not any("pass" in key or "pin" in key for key in tool[NAMESPACE])


def test_encrypted_partition_equals_the_tools_with_its_key(tool_encrypted, inputs):
    tool_keys = (tool_encrypted / f"{tool_encrypted.name}-keys-partition.bin").read_bytes()
    key = xts_key_from_keys_partition(tool_keys)
    ours = build_partition(inputs.data, xts_key=key)
    assert ours.keys == tool_keys == keys_partition(key)
    assert ours.image == _partition(tool_encrypted)
    assert decode_partition(_partition(tool_encrypted), keys=tool_keys) == decode_partition(
        build_partition(inputs.data).image
    )
    assert b"A19-00100001" not in _partition(tool_encrypted)


def test_library_decrypt_of_our_encrypted_image_is_our_plain_image(tmp_path, inputs):
    """esp-idf-nvs-partition-gen's own decrypt (not our reader) undoes our encryption."""
    built = build_partition(inputs.data, xts_key=bytes(range(64)))
    assert built.keys is not None
    (tmp_path / "enc.bin").write_bytes(built.image)
    (tmp_path / "keys.bin").write_bytes(built.keys)
    nvs_partition_gen.decrypt(
        SimpleNamespace(
            input=str(tmp_path / "enc.bin"),
            key=str(tmp_path / "keys.bin"),
            output="dec.bin",
            outdir=str(tmp_path),
        )
    )
    assert (tmp_path / "dec.bin").read_bytes() == build_partition(inputs.data).image
