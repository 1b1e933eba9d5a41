"""dac_storage device-key end to end: the device simulator's keys never leave it.

A device-key order runs through the real pipeline; a station flashes each device, runs the
simulator's `csr` (the key is made in the device's own folder), carries the CSR to the signer
over Kafka and writes the DAC back with the simulator's `write`. Some boards are faulty the way
real chips can be (a broken CSR signature, a P-384 key, no CSR, two CSRs, a cloned key, a
failing certificate write), and one station waits too briefly for the signer: each fails alone,
in one line, and the DAC ledger lists exactly the DACs the stations bound. Every good device
ends with a DAC over its own key that OpenSSL and the Matter SDK accept, and no device private
key is anywhere in the bucket or on any topic.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.matter import csr
from matterfab.messages import DAC_LEDGER
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from matterfab.topics import ALL_TOPICS
from tests.chip_sdk import chip_certificate_format_error, chip_chain_error
from tests.e2e.test_stations import Stations, complete_bindings, csv_rows, eventually, records
from tests.pipeline import Services, matterfab, work_order, write_order
from tests.sealed import ensure_line

pytestmark = pytest.mark.timeout(900)

# Stands where a line's boards stand: runs the simulator for each device, with the faults of
# the boards that have them (faults.json: mode -> device_id -> extra simulator arguments, or
# ["fail"] for a write that fails the way a flaky serial link does).
BOARDS = """
import json, os, sys
faults = json.loads(open(sys.argv[1]).read())
mode, device = sys.argv[2], sys.argv[3]
extra = faults.get(mode, {}).get(device, [])
if extra == ["fail"]:
    print("E (880) esp_secure_cert: write failed: flash error")
    sys.exit(3)
argv = [sys.executable, "-m", "matterfab.devsim", mode, "--device", device, *sys.argv[4:], *extra]
os.execv(sys.executable, argv)
"""

ORDER, QUANTITY = "DK-E2E", 9
LATE = "DK-E2E-LATE"  # one device, on a station that does not wait long enough for its DAC
GOOD = (0, 7, 8)
FAULTS = {  # index -> (mode, simulator arguments, the one-line reason that must be reported)
    1: ("csr", ["--fault", "forge"], "self-signature does not verify"),
    2: ("csr", ["--fault", "p384"], "key must be EC P-256 (secp256r1), not secp384r1"),
    3: ("csr", ["--fault", "none"], "the csr command printed no PEM CERTIFICATE REQUEST"),
    4: ("csr", ["--fault", "two"], "the csr command printed 2 CSRs, must print exactly one"),
    # A chip cloned from another order's device, whose key the signer has certified already.
    5: ("csr", ["--key-of", f"{LATE}/0000000"], "public key already certified for product"),
    6: ("write", ["fail"], "cert command exited 3"),
}


def device(index: int, order_id: str = ORDER) -> str:
    return f"{order_id}/{index:07d}"


@pytest.fixture
def stations(stack: LocalStack, pipeline: Services) -> Iterator[Stations]:
    group = Stations(stack)
    try:
        yield group
    finally:
        group.stop_all()


def station_options(tmp_path: Path, state: Path, faults: dict[str, Any]) -> list[str]:
    script = tmp_path / "boards.py"
    script.write_text(BOARDS)
    faults_file = tmp_path / "faults.json"
    faults_file.write_text(json.dumps(faults))
    run = f"{sys.executable} {script} {faults_file}"
    return [
        "--out", str(tmp_path / "flashed"), "--test-mac-prefix", "02:dd",
        "--csr-cmd", f"{run} csr {{device_id}} --state {state} --mac {{mac}}",
        "--cert-cmd", f"{run} write {{device_id}} --state {state} --dac {{dac}} --pai {{pai}} "
        "--secure-cert {secure_cert}",
        "--max-attempts", "2", "--backoff", "0.1",
    ]  # fmt: skip


def device_key(state: Path, index: int, order_id: str = ORDER) -> ec.EllipticCurvePrivateKey:
    path = state / device(index, order_id).replace("/", "_") / "key.pem"
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def secrets_of(key: ec.EllipticCurvePrivateKey) -> list[bytes]:
    """Every form a leaked device private key could take in an object or a message."""
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.b64encode(pkcs8)[:48]]


async def every_record(settings: KafkaSettings, topic: str) -> list[bytes]:
    cons = await kafka.topic_reader(settings, topic, "beginning")
    try:
        tps = sorted(cons.assignment(), key=lambda tp: tp.partition)
        ends = await cons.end_offsets(tps)
        out: list[bytes] = []
        while True:
            behind = [tp for tp in tps if await cons.position(tp) < ends[tp]]
            if not behind:
                return out
            for recs in (await cons.getmany(*behind, timeout_ms=1000)).values():
                out += [rec.value or b"" for rec in recs]
    finally:
        await kafka.stop_reader(cons)


async def test_device_key_order_end_to_end(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,
    profile: str,
    tmp_path: Path,
) -> None:
    state = tmp_path / "boards"
    # A station that waits too briefly: the DAC is issued, never received, never in the ledger.
    late_order = LATE
    ensure_line(stack, "line-dk-late")  # the order is sealed to its station's line
    late = work_order(late_order, 1, profile, dac_storage="device-key", line="line-dk-late")
    done = matterfab(stack, "order", "submit", str(write_order(tmp_path, late)), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "late").mkdir()
    options = station_options(tmp_path / "late", state, {})
    stations.start("dk-st-late", "line-dk-late", late_order, *options, "--dac-timeout", "0.001")
    (late_row,) = await complete_bindings(store, late_order, 1)
    assert late_row["mac"] == "" and late_row["dac_serial"] == ""
    late_failed = await csv_rows(store, f"orders/{late_order}/bindings-failed.csv")
    assert late_failed is not None
    assert late_failed[0]["reason"] == (
        "the signer did not answer within 0.001s (after 2 attempts)"
    )
    issued_late = await eventually(
        lambda: store.list_keys(f"orders/{late_order}/device-dacs/"), 30, "the late DAC record"
    )
    assert len(issued_late) == 1

    faults: dict[str, Any] = {"csr": {}, "write": {}}
    for index, (mode, extra, _) in FAULTS.items():
        faults[mode][device(index)] = extra
    ensure_line(stack, "line-dk")
    order = work_order(ORDER, QUANTITY, profile, dac_storage="device-key", line="line-dk")
    done = matterfab(stack, "order", "submit", str(write_order(tmp_path, order)), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    # Nothing was issued at build time: no dacs.lot, no DAC in any manifest row.
    assert not [k for k in await store.list_keys(f"orders/{ORDER}/") if "dacs.lot" in k]
    manifest = await csv_rows(store, f"orders/{ORDER}/manifest.csv")
    assert manifest is not None and all(r["dac_serial"] == "" for r in manifest)

    stations.start("dk-st-1", "line-dk", ORDER, *station_options(tmp_path, state, faults))
    rows = await complete_bindings(store, ORDER, QUANTITY)
    by_index = {int(r["device_id"].rsplit("/", 1)[1]): r for r in rows}

    # Good boards: bound with their DAC, which is over their own key and chains.
    paa_pem = (stack.home / "profiles" / profile / "paa.pem").read_bytes()
    paa = x509.load_pem_x509_certificate(paa_pem)
    bound = {}
    for index in GOOD:
        row = by_index[index]
        assert row["mac"] and row["dac_serial"] and len(row["dac_sha256"]) == 64, row
        folder = state / device(index).replace("/", "_")
        dac_der, pai_der = (folder / "dac.der").read_bytes(), (folder / "pai.der").read_bytes()
        key = device_key(state, index)
        assert csr.dac_over_key(dac_der, csr.public_key_raw(key.public_key()))
        dac = x509.load_der_x509_certificate(dac_der)
        assert f"{dac.serial_number:x}".lstrip("0") == row["dac_serial"].lstrip("0")
        for name, data in (("dac.pem", dac_der), ("pai.pem", pai_der)):
            pem = x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.PEM)
            (folder / name).write_bytes(pem)
        (folder / "paa.pem").write_bytes(paa.public_bytes(serialization.Encoding.PEM))
        ok = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-CAfile", str(folder / "paa.pem"),
             "-untrusted", str(folder / "pai.pem"), str(folder / "dac.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
        assert chip_certificate_format_error(dac_der, "dac") == 0
        paa_der = paa.public_bytes(serialization.Encoding.DER)
        assert chip_chain_error(paa_der, pai_der, dac_der) == (0, 0)
        bound[index] = (row["dac_serial"], dac_der)

    # Faulty boards: each failed alone, in one line naming why.
    failed = await csv_rows(store, f"orders/{ORDER}/bindings-failed.csv")
    assert failed is not None
    reasons = {int(r["device_id"].rsplit("/", 1)[1]): r["reason"] for r in failed}
    assert sorted(reasons) == sorted(FAULTS)
    for index, (_, _, reason) in FAULTS.items():
        assert reason in reasons[index], (index, reasons[index])
        assert "\n" not in reasons[index] and "Traceback" not in reasons[index]
        assert by_index[index]["dac_serial"] == ""
    assert f"held by device {device(0, LATE)}" in reasons[5]

    # The ledger lists exactly the bound DACs: not the cert-cmd failure's, not the late one's.
    def ledgered(entries: list[dict[str, Any]]) -> dict[str, str]:
        return {d["device_id"]: d["dac_serial"] for e in entries for d in e["dacs"]}

    async def ledger_complete() -> dict[str, str] | None:
        got = ledgered(await records(kafka_settings, DAC_LEDGER, ORDER))
        return got if len(got) >= len(GOOD) else None

    ledger = await eventually(ledger_complete, 60, "the bound DACs in the ledger")
    assert ledger == {device(i): bound[i][0] for i in GOOD}
    assert await store.list_keys(f"orders/{ORDER}/device-dacs/{6:07d}/")  # issued, not bound
    assert ledgered(await records(kafka_settings, DAC_LEDGER, late_order)) == {}

    # order fetch writes the bound DACs; verify checks them against the PAI and PAA.
    out = tmp_path / "fetched"
    fetched = matterfab(stack, "order", "fetch", ORDER, "--out", str(out))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert sorted(p.parent.name for p in out.glob("devices/*/dac.der")) == [
        f"{i:07d}" for i in GOOD
    ]
    for index in GOOD:
        assert (out / "devices" / f"{index:07d}" / "dac.der").read_bytes() == bound[index][1]
    verified = matterfab(stack, "verify", ORDER)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # No device private key anywhere: not in the bucket, not on any topic.
    keys = [device_key(state, i) for i in range(QUANTITY) if i not in (2, 5)]
    keys.append(device_key(state, 0, late_order))
    forbidden = [s for k in keys for s in secrets_of(k)]
    blobs = [await store.get(k) for k in await store.list_keys("orders/DK-E2E")]
    blobs += [await store.get(k) for k in await store.list_keys("device-keys/")]
    for topic in ALL_TOPICS:
        blobs += await every_record(kafka_settings, topic)
    assert len(blobs) > 50
    for blob in blobs:
        for secret in forbidden:
            assert secret not in blob
        assert b"PRIVATE KEY" not in blob
