"""Sealed for the line, end to end on the real broker and S3 (issue #20).

- After orders in every dac_storage mode (with and without XTS), every object in the bucket
  and every record on every topic is read: none holds any of the orders' DAC private keys or
  XTS keys in any encoding (tests/sealed.py). The keys themselves come from the plaintext that
  `order fetch` writes with line local's key, which the scan does find (so it can fail).
- `order fetch` and `verify` of an order sealed to a line whose key is not in the state folder:
  `<name>.sealed` and digest/header checks without `--line-key`, plaintext and a full audit
  with it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from matterfab import sealing
from matterfab.matter import nvs_reader, secure_cert
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from matterfab.topics import load_topics
from tests.pipeline import Services, matterfab, work_order, write_order
from tests.reliability.harness import read_topic
from tests.sealed import find_secrets

pytestmark = pytest.mark.timeout(900)

CD_ONLY = "e2e-seal-cd-only"
MODES = {
    "SEAL-NVS": {"dac_storage": "factory-nvs"},
    "SEAL-NVS-XTS": {"dac_storage": "factory-nvs", "partition": {"encryption": "xts"}},
    "SEAL-SC": {"dac_storage": "secure-cert"},
    "SEAL-SC-XTS": {"dac_storage": "secure-cert", "partition": {"encryption": "xts"}},
    "SEAL-OM-XTS": {"dac_storage": "on-module", "partition": {"encryption": "xts"}},
}
QUANTITY = 3


def submit(stack: LocalStack, tmp: Path, order: dict[str, Any]) -> None:
    done = matterfab(
        stack, "order", "submit", str(write_order(tmp, order)), "--wait", "--timeout", "300"
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def fetched(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One order per mode, submitted and fetched with line local's key: order -> folder."""
    made = matterfab(stack, "pki", "add-cd", CD_ONLY, "--vid", "0xFFF1", "--pid", "0x8000")
    assert made.returncode == 0, made.stdout + made.stderr
    tmp = tmp_path_factory.mktemp("sealed")
    out = {}
    for order_id, fields in MODES.items():
        name = CD_ONLY if fields["dac_storage"] == "on-module" else profile
        submit(stack, tmp, work_order(order_id, QUANTITY, name, **fields))
        folder = tmp / order_id
        got = matterfab(stack, "order", "fetch", order_id, "--out", str(folder))
        assert got.returncode == 0, got.stdout + got.stderr
        assert not list(folder.rglob("*.sealed"))  # the state folder holds line local's key
        out[order_id] = folder
    return out


def secrets_of(folder: Path) -> dict[str, bytes]:
    """Every DAC private key and XTS key of a fetched order, by a name for the report."""
    found: dict[str, bytes] = {}
    for device in sorted((folder / "devices").iterdir()):
        keys_file = device / "nvs_keys.bin"
        keys = keys_file.read_bytes() if keys_file.exists() else None
        if keys is not None:
            found[f"{folder.name}/{device.name} XTS key"] = keys[:64]
        factory = nvs_reader.decode_partition((device / "partition.bin").read_bytes(), keys=keys)
        entry = factory["chip-factory"].get("dac-key")
        if entry is not None:
            found[f"{folder.name}/{device.name} DAC key"] = entry[1]
        cert = device / "esp_secure_cert.bin"
        if cert.exists():
            raw = secure_cert.read_secure_cert(cert.read_bytes()).dac_key_raw
            found[f"{folder.name}/{device.name} DAC key"] = raw
    return found


async def everything_readable(stack: LocalStack) -> list[tuple[str, bytes]]:
    """Every object in the bucket and every record (key and value) on every topic."""
    blobs: list[tuple[str, bytes]] = []
    async with ObjectStore.open(stack.s3_settings()) as store:
        keys = await store.list_keys("")
        for key in keys:
            data = await store.get_or_none(key)
            if data is not None:
                blobs.append((f"s3:{key}", data))
    for topic in load_topics():
        for rec in await read_topic(stack.kafka_settings(), topic.name):
            where = f"{topic.name}[{rec.partition}]@{rec.offset}"
            blobs.append((where, (rec.key or b"") + b"\n" + (rec.value or b"")))
    return blobs


def test_no_device_secret_in_the_bucket_or_on_any_topic(
    stack: LocalStack, fetched: dict[str, Path]
) -> None:
    secrets = {k: v for folder in fetched.values() for k, v in secrets_of(folder).items()}
    dac_keys = [k for k in secrets if k.endswith("DAC key")]
    xts_keys = [k for k in secrets if k.endswith("XTS key")]
    # 4 modes with a DAC key and 3 with XTS keys, QUANTITY devices each.
    assert (len(dac_keys), len(xts_keys)) == (4 * QUANTITY, 3 * QUANTITY)
    # The scan finds them where they are in plaintext: the files fetched with the key.
    plain = [(str(p), p.read_bytes()) for f in fetched.values() for p in f.rglob("*.bin")]
    # (Not the DAC keys of SEAL-NVS-XTS: their partitions are XTS-encrypted even in plaintext.)
    hits = find_secrets(secrets, plain)
    for name in secrets:
        if not name.startswith("SEAL-NVS-XTS/") or name.endswith("XTS key"):
            assert any(f" holds {name} " in hit for hit in hits), name
    blobs = asyncio.run(everything_readable(stack))
    assert len(blobs) > 100 and any(w.startswith("mfg.devices.attested") for w, _ in blobs)
    assert find_secrets(secrets, blobs) == []


def test_sealed_objects_name_their_line_order_and_device(fetched: dict[str, Path]) -> None:
    for order_id, folder in fetched.items():
        doc = json.loads((folder / "manifest.json").read_text())
        assert doc["line"] == "local"
        for row in doc["devices"]:
            assert row["line"] == "local"
            for name, ref in row["objects"].items():
                sealed = name in ("partition", "nvs_keys", "secure_cert")
                assert ("sealed" in ref) == sealed, (order_id, name)


def test_fetch_and_verify_with_and_without_the_line_key(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    key = tmp_path / "line-b.pem"
    made = matterfab(stack, "line", "create", "line-b", "--key-out", str(key))
    assert made.returncode == 0, made.stdout + made.stderr
    assert (key.stat().st_mode & 0o777) == 0o600
    again = matterfab(stack, "line", "create", "line-b", "--key-out", str(tmp_path / "x.pem"))
    assert again.returncode == 2 and "line line-b already exists" in again.stderr
    assert not (tmp_path / "x.pem").exists()
    shown = matterfab(stack, "line", "show", "line-b")
    assert shown.returncode == 0 and "current" in shown.stdout

    fields = {"dac_storage": "secure-cert", "partition": {"encryption": "xts"}}
    submit(stack, tmp_path, work_order("SEAL-B", 2, profile, line="line-b", **fields))
    bare = tmp_path / "bare"
    got = matterfab(stack, "order", "fetch", "SEAL-B", "--out", str(bare))
    assert got.returncode == 0, got.stdout + got.stderr
    said = " ".join(got.stderr.split())
    assert "6 objects sealed to line line-b written as <name>.sealed" in said
    names = {p.name for p in (bare / "devices" / "0000000").iterdir()}
    assert {"partition.bin.sealed", "nvs_keys.bin.sealed", "esp_secure_cert.bin.sealed"} <= names
    assert not {"partition.bin", "nvs_keys.bin", "esp_secure_cert.bin"} & names
    assert {"qrcode.png", "onboarding.json", "dac.der"} <= names

    opened = tmp_path / "opened"
    got = matterfab(stack, "order", "fetch", "SEAL-B", "--out", str(opened), "--line-key", str(key))
    assert got.returncode == 0, got.stdout + got.stderr
    assert not list(opened.rglob("*.sealed"))
    secure_cert.read_secure_cert(
        (opened / "devices" / "0000001" / "esp_secure_cert.bin").read_bytes()
    )

    plain = matterfab(stack, "verify", "SEAL-B")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "NOTE" in plain.stdout and "contents not audited" in " ".join(plain.stdout.split())
    full = matterfab(stack, "verify", "SEAL-B", "--line-key", str(key))
    assert full.returncode == 0, full.stdout + full.stderr
    assert "NOTE" not in full.stdout and "every artifact verified" in full.stdout

    # Rotation: a new key for new orders; SEAL-B stays sealed to the first one.
    newer = tmp_path / "line-b-2.pem"
    rotated = matterfab(stack, "line", "rotate", "line-b", "--key-out", str(newer))
    assert rotated.returncode == 0 and "key 2" in rotated.stdout, rotated.stdout + rotated.stderr
    listed = matterfab(stack, "line", "list")
    row = next(ln for ln in listed.stdout.splitlines() if "line-b" in ln)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:2] == ["line-b", "2"], listed.stdout
    wrong = matterfab(
        stack, "order", "fetch", "SEAL-B", "--out", str(tmp_path / "w"), "--line-key", str(newer)
    )
    assert wrong.returncode == 1 and "none of the keys given" in " ".join(wrong.stderr.split())
    # A key made elsewhere (an HSM's): only its public part is registered.
    pub = tmp_path / "hsm.pub.pem"
    pub.write_bytes(sealing.public_pem(sealing.generate().public_key()))
    added = matterfab(stack, "line", "add", "line-hsm", "--public-key", str(pub))
    assert added.returncode == 0, added.stdout + added.stderr
    twice = matterfab(stack, "line", "add", "line-hsm", "--public-key", str(pub))
    assert twice.returncode == 2 and "error: line: line line-hsm already exists" in twice.stderr
