"""After the line, end to end: find any device, revoke, CRLs checked by OpenSSL, scrap, rework.

An order of 54 devices is built by the real pipeline and flashed by a station (`--out`, test
MACs); then the `matterfab` CLI finds devices by every key, revokes one DAC, writes a CRL that
`openssl crl -verify` and `openssl verify -crl_check` judge, revokes 50 more at once (none
lost: the second CRL lists all 51, with a higher number), scraps one device and reissues
another (old DAC revoked as superseded, new DAC found and verified).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from matterfab.config import KafkaSettings
from matterfab.fleet import revocations
from matterfab.matter import crl as crl_core
from matterfab.messages import ORDER_EVENTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.e2e.test_stations import (
    Stations,
    complete_bindings,
    manifest_by_device,
    records,
    submit,
)
from tests.pipeline import Services, device_objects, matterfab, work_order
from tests.sealed import local_keys, open_if_sealed

pytestmark = pytest.mark.timeout(900)

ORDER, LINE, STATION = "ATL-22", "line-atl", "st-atl"
QUANTITY = 54
SCRAP, REWORK, VALID = 52, 53, 51


def dev(i: int) -> str:
    return f"{ORDER}/{i:07d}"


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The command failed with `code` and said so in one line, without a traceback."""
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def find(stack: LocalStack, *args: str) -> dict[str, Any]:
    done = matterfab(stack, "device", "find", *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.fixture(scope="module")
def built(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The order built and flashed: its manifest rows and bindings by device_id."""
    tmp = tmp_path_factory.mktemp("atl")
    stations = Stations(stack)
    try:
        stations.start(STATION, LINE, ORDER, "--out", str(tmp / "flashed"),
                       "--test-mac-prefix", "02:22:01")  # fmt: skip
        stations.wait_assigned([STATION])
        submit(stack, tmp, work_order(ORDER, QUANTITY, profile, line=LINE))

        async def read() -> tuple[Any, Any, dict[str, bytes]]:
            async with ObjectStore.open(stack.s3_settings()) as store:
                rows = await complete_bindings(store, ORDER, QUANTITY)
                manifest = (await store.get(f"orders/{ORDER}/manifest.csv")).decode()
                dacs = await device_objects(store, ORDER, "dac")
            return rows, manifest, dacs

        rows, manifest, dacs = asyncio.run(read())
    finally:
        stations.stop_all()
    return {
        "bindings": {r["device_id"]: r for r in rows},
        "manifest": {r["device_id"]: r for r in csv.DictReader(io.StringIO(manifest))},
        "dacs": dacs,
        "tmp": tmp,
    }


def test_find_by_every_key(stack: LocalStack, built: dict[str, Any]) -> None:
    row, binding = built["manifest"][dev(3)], built["bindings"][dev(3)]
    for option, value in [
        ("--serial", row["serial_num"]),
        ("--mac", binding["mac"].upper()),
        ("--dac-serial", row["dac_serial"]),
        ("--device-id", dev(3)),
        ("--qr", row["qr_payload"]),
    ]:
        doc = find(stack, option, value)
        assert doc["device_id"] == dev(3), option
        assert doc["state"] == "bound" and doc["mac"] == binding["mac"]
        assert doc["dac_serial"] == row["dac_serial"] and doc["station_id"] == STATION
        assert doc["serial_num"] == row["serial_num"] and doc["index"] == "0000003"
    text = matterfab(stack, "device", "find", "--serial", row["serial_num"])
    assert text.returncode == 0 and "state    bound" in text.stdout
    for option, value in [("--serial", "NO-SUCH"), ("--device-id", f"{ORDER}/0009999"),
                          ("--mac", "02:00:00:00:00:99"), ("--dac-serial", "0abc")]:  # fmt: skip
        line = one_line_error(matterfab(stack, "device", "find", option, value))
        assert "no device" in line, line


def test_revoke_crl_openssl_and_fifty_concurrent(
    stack: LocalStack, built: dict[str, Any], profile: str, tmp_path: Path
) -> None:
    first = built["manifest"][dev(0)]["dac_serial"]
    done = matterfab(stack, "dac", "revoke", "--device", dev(0), "--reason", "keyCompromise")
    assert done.returncode == 0 and "1 revoked" in done.stdout, done.stdout + done.stderr
    again = matterfab(stack, "dac", "revoke", "--dac-serial", first, "--reason", "superseded")
    assert again.returncode == 0 and "already revoked (keyCompromise" in again.stdout
    assert find(stack, "--device-id", dev(0))["state"] == "revoked"
    # Bad input: one line each, exit 2.
    assert "reason: must be one of" in one_line_error(
        matterfab(stack, "dac", "revoke", "--device", dev(1), "--reason", "stolen")
    )
    one_line_error(matterfab(stack, "dac", "revoke", "--device", f"{ORDER}/0000999",
                             "--reason", "keyCompromise"))  # fmt: skip
    one_line_error(matterfab(stack, "dac", "revoke", "--dac-serial", "01", "--reason",
                             "unspecified"))  # fmt: skip

    home = Path(matterfab(stack, "pki", "show", profile).stdout.splitlines()[0].strip())
    pai, paa = home / "pai.pem", home / "paa.pem"
    crl1 = tmp_path / "crl1.der"
    made = matterfab(stack, "pki", "crl", profile, "--out", str(crl1), "--next-update-days",
                     "7", "--data-url", "https://crl.example.com/e2e.crl")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    checked = openssl("crl", "-inform", "DER", "-in", str(crl1), "-CAfile", str(pai), "-noout",
                      "-verify")  # fmt: skip
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr
    point = json.loads((tmp_path / "crl1.revocation-point.json").read_text())
    assert point["dataURL"] == "https://crl.example.com/e2e.crl"
    assert point["dataFileSize"] == crl1.stat().st_size and point["revocationType"] == 1
    assert point["vid"] == 0xFFF1 and point["isPAA"] is False

    def verify(index: int, crl_file: Path) -> subprocess.CompletedProcess[str]:
        pem = tmp_path / f"dac{index}.der"
        pem.write_bytes(built["dacs"][f"{index:07d}"])
        crl_pem = crl_file.with_suffix(".pem")
        openssl("crl", "-inform", "DER", "-in", str(crl_file), "-out", str(crl_pem))
        dac_pem = pem.with_suffix(".pem")
        openssl("x509", "-inform", "DER", "-in", str(pem), "-out", str(dac_pem))
        return openssl("verify", "-crl_check", "-CAfile", str(paa), "-untrusted", str(pai),
                       "-CRLfile", str(crl_pem), str(dac_pem))  # fmt: skip

    revoked = verify(0, crl1)
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    good = verify(VALID, crl1)
    assert good.returncode == 0, good.stdout + good.stderr

    # 50 revocations at once (devices 1..50), each through the real bucket: none lost.
    async def fifty() -> list[revocations.Outcome]:
        async with ObjectStore.open(stack.s3_settings()) as store:
            targets = [await revocations.device_target(store, dev(i)) for i in range(1, 51)]
            return list(await asyncio.gather(
                *(revocations.revoke(store, t, "affiliationChanged", f"op{n}")
                  for n, t in enumerate(targets))
            ))  # fmt: skip

    outcomes = asyncio.run(fifty())
    assert all(o.created for o in outcomes) and len(outcomes) == 50
    crl2 = tmp_path / "crl2.der"
    made = matterfab(stack, "pki", "crl", profile, "--out", str(crl2))
    assert made.returncode == 0, made.stdout + made.stderr
    one, two = x509.load_der_x509_crl(crl1.read_bytes()), x509.load_der_x509_crl(crl2.read_bytes())
    assert crl_core.crl_number(crl2.read_bytes()) > crl_core.crl_number(crl1.read_bytes())
    serials2 = {r.serial_number for r in two}
    assert {r.serial_number for r in one} <= serials2  # still lists the first revocation
    want = {int(built["manifest"][dev(i)]["dac_serial"], 16) for i in range(0, 51)}
    assert want <= serials2
    assert verify(VALID, crl2).returncode == 0
    assert verify(7, crl2).returncode != 0


def test_scrap_and_reissue(
    stack: LocalStack,
    built: dict[str, Any],
    profile: str,
    tmp_path: Path,
    kafka_settings: KafkaSettings,
) -> None:
    done = matterfab(stack, "device", "scrap", dev(SCRAP), "--reason", "failed EOL RF test",
                     "--station-id", STATION)  # fmt: skip
    assert done.returncode == 0 and "scrapped" in done.stdout, done.stdout + done.stderr
    doc = find(stack, "--serial", built["manifest"][dev(SCRAP)]["serial_num"])
    assert doc["state"] == "scrapped" and doc["scrapped"]["reason"] == "failed EOL RF test"
    assert doc["dacs"][0]["revoked"]["reason"] == "cessationOfOperation"
    assert "scrapped" in one_line_error(matterfab(stack, "device", "reissue", dev(SCRAP)))

    async def scrapped_rows() -> list[dict[str, str]]:
        async with ObjectStore.open(stack.s3_settings()) as store:
            raw = await store.get(f"orders/{ORDER}/bindings-scrapped.csv")
        return list(csv.DictReader(io.StringIO(raw.decode())))

    (row,) = asyncio.run(scrapped_rows())
    assert row["device_id"] == dev(SCRAP) and row["reason"] == "failed EOL RF test"
    assert row["station_id"] == STATION
    assert row["serial_num"] == built["manifest"][dev(SCRAP)]["serial_num"]

    # Its identities are never reused: an order asking for its serial number is rejected.
    taken = built["manifest"][dev(SCRAP)]["serial_num"]
    reuse = work_order("ATL-22-REUSE", 1, profile, devices=[{"serial_num": taken}])
    path = tmp_path / "reuse.json"
    path.write_text(json.dumps(reuse))
    rejected = matterfab(stack, "order", "submit", str(path), "--wait", "--timeout", "120")
    assert rejected.returncode == 2, rejected.stdout + rejected.stderr
    assert "serial" in (rejected.stdout + rejected.stderr).lower()

    old = built["manifest"][dev(REWORK)]
    out = tmp_path / "rework"
    done = matterfab(stack, "device", "reissue", dev(REWORK), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = find(stack, "--device-id", dev(REWORK))
    assert doc["state"] == "reissued" and doc["generation"] == 1
    new_serial = doc["dac_serial"]
    assert new_serial != old["dac_serial"]
    assert [d["revoked"] and d["revoked"]["reason"] for d in doc["dacs"]] == ["superseded", None]
    # Same identities: serial, discriminator, passcode (so the same QR payload).
    assert doc["serial_num"] == old["serial_num"] and doc["qr_payload"] == old["qr_payload"]
    assert find(stack, "--dac-serial", old["dac_serial"])["device_id"] == dev(REWORK)
    assert find(stack, "--dac-serial", new_serial)["dac_serial"] == new_serial
    assert find(stack, "--qr", old["qr_payload"])["generation"] == 1
    # The new DAC chains to the PAA; its partition holds it.
    home = Path(matterfab(stack, "pki", "show", profile).stdout.splitlines()[0].strip())
    new_pem = tmp_path / "new.pem"
    openssl("x509", "-inform", "DER", "-in", str(out / "dac.der"), "-out", str(new_pem))
    ok = openssl("verify", "-CAfile", str(home / "paa.pem"), "-untrusted", str(home / "pai.pem"),
                 str(new_pem))  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The new partition is sealed to the order's line, as the builder seals (never plain here).
    assert not (out / "partition.bin").exists()
    sealed = (out / "partition.bin.sealed").read_bytes()
    assert (out / "dac.der").read_bytes() in open_if_sealed(sealed, local_keys(stack.home, LINE))
    crl3 = tmp_path / "crl3.der"
    assert matterfab(stack, "pki", "crl", profile, "--out", str(crl3)).returncode == 0
    entries = {r.serial_number: r for r in x509.load_der_x509_crl(crl3.read_bytes())}
    reason = entries[int(old["dac_serial"], 16)].extensions.get_extension_for_class(x509.CRLReason)
    assert reason.value.reason == x509.ReasonFlags.superseded
    assert int(new_serial, 16) not in entries

    # Asked otherwise: a new passcode (and so a new QR code); both QR codes find the device.
    before = built["manifest"][dev(1)]
    done = matterfab(stack, "device", "reissue", dev(1), "--new-passcode")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = find(stack, "--device-id", dev(1))
    assert doc["qr_payload"] != before["qr_payload"] and doc["serial_num"] == before["serial_num"]
    assert doc["discriminator"] == int(before["discriminator"])
    assert find(stack, "--qr", doc["qr_payload"])["device_id"] == dev(1)
    assert find(stack, "--qr", before["qr_payload"])["device_id"] == dev(1)

    # The monitor's counts travel on the order's events: bound from the assembler, scrapped
    # and revoked from the commands (the last one: 51 revoked by the test above + the scrapped
    # one + the reworked ones, whose current DACs are valid again).
    events = asyncio.run(records(kafka_settings, ORDER_EVENTS, ORDER))
    assert max(e.get("bound", 0) for e in events) == QUANTITY
    last = [e for e in events if e.get("scrapped")][-1]
    assert last["scrapped"] == 1 and last["ready"] == QUANTITY
    assert last["revoked"] == len([i for i in range(51) if i != 1]) + 1


def test_crl_bad_profiles(stack: LocalStack, profile: str, tmp_path: Path) -> None:
    out = str(tmp_path / "x.der")
    assert "unknown profile" in one_line_error(matterfab(stack, "pki", "crl", "nope", "--out", out))
    home = Path(matterfab(stack, "pki", "show", profile).stdout.splitlines()[0].strip())
    keyless = tmp_path / "profiles"
    keyless.mkdir()
    subprocess.run(["cp", "-r", str(home), str(keyless)], check=True)
    (keyless / profile / "pai-key.pem").unlink()
    line = one_line_error(matterfab(stack, "pki", "crl", profile, "--out", out,
                                    "--profiles-dir", str(keyless)))  # fmt: skip
    assert "pai-key.pem" in line


def test_crl_signed_in_the_hsm(stack: LocalStack, tmp_path: Path) -> None:
    """A PAI key in SoftHSM2 signs the CRL; a wrong or missing PIN is one line, exit 2."""
    from datetime import UTC, datetime

    from matterfab import profiles
    from matterfab.fleet.records import Revocation
    from matterfab.matter import cd, pki
    from tests.e2e.test_hsm_pipeline import MODULE
    from tests.hsm_pki import make_token

    token = make_token(tmp_path / "hsm", "atl-crl", "11223344", "MATTERFAB_ATL_PIN")
    code = (
        "import sys\nfrom cryptography.hazmat.primitives import serialization as s\n"
        "from matterfab import keysource\n"
        f"pub = keysource.generate_pkcs11_key({MODULE!r}, 'atl-crl', '11223344', 'pai')\n"
        "sys.stdout.write(pub.public_bytes(s.Encoding.PEM, "
        "s.PublicFormat.SubjectPublicKeyInfo).decode())\n"
    )
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    made = subprocess.run([sys.executable, "-c", code], env=token.env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    public = serialization.load_pem_public_key(made.stdout.encode())
    paa, paa_key = pki.make_paa("ATL HSM PAA", 0xFFF1)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    pai = pki.issue_pai(paa, paa_key, public, 0xFFF1, common_name="ATL HSM PAI")
    cd_cert, cd_key = pki.make_cd_signing()
    content = cd.CdContent(vendor_id=0xFFF1, product_id_array=[0x8000], device_type_id=0x16,
                           certificate_id="ZIG20142ZB330003-24", version_number=1)  # fmt: skip
    folder = tmp_path / "profiles"
    profiles.create_profile(
        "atl-hsm", vendor_id=0xFFF1, product_id=None, pai_cert=pai, paa_cert=paa,
        cd_der=cd.sign_cd(content, cd_cert, cd_key), cd_signing_cert=cd_cert,
        key_spec={"type": "pkcs11", "module": MODULE, "token_label": "atl-crl",
                  "key_label": "pai", "pin_env": "MATTERFAB_ATL_PIN"},
        profiles_dir=folder,
    )  # fmt: skip

    async def revoke_two() -> None:
        async with ObjectStore.open(stack.s3_settings()) as store:
            for n, reason in ((0x1234, "keyCompromise"), (0xBEEF, "cessationOfOperation")):
                rec = Revocation(dac_serial=f"{n:04x}", profile="atl-hsm", device_id=f"X/{n:07d}",
                                 generation=0, reason=reason, by="test",
                                 at=datetime.now(UTC))  # fmt: skip
                await store.put_if_absent(f"fleet/revocations/atl-hsm/{n:04x}.json",
                                          rec.to_bytes())  # fmt: skip

    asyncio.run(revoke_two())
    out = tmp_path / "hsm.der"
    args = ("pki", "crl", "atl-hsm", "--out", str(out), "--profiles-dir", str(folder))
    conf = token.env["SOFTHSM2_CONF"]
    wrong = matterfab(stack, *args, MATTERFAB_ATL_PIN="99999999", SOFTHSM2_CONF=conf)
    line = one_line_error(wrong)
    assert "PIN" in line and "wrong" in line
    line = one_line_error(matterfab(stack, *args, MATTERFAB_ATL_PIN="", SOFTHSM2_CONF=conf))
    assert "MATTERFAB_ATL_PIN" in line
    done = matterfab(stack, *args, MATTERFAB_ATL_PIN="11223344", SOFTHSM2_CONF=conf)
    assert done.returncode == 0, done.stdout + done.stderr
    pai_pem = tmp_path / "hsm-pai.pem"
    pai_pem.write_bytes(pai.public_bytes(serialization.Encoding.PEM))
    checked = openssl("crl", "-inform", "DER", "-in", str(out), "-CAfile", str(pai_pem), "-noout",
                      "-verify")  # fmt: skip
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr
    assert {r.serial_number for r in x509.load_der_x509_crl(out.read_bytes())} == {0x1234, 0xBEEF}


def test_a_built_device_not_flashed_is_found_after_reindex(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    """Issue #26: the build path writes no pointer; a device is indexed when it is flashed, or
    by `device reindex` (no station runs for this order's line)."""
    order = "ATL-26"
    submit(stack, tmp_path, work_order(order, 3, profile))

    async def rows() -> dict[str, dict[str, str]]:
        async with ObjectStore.open(stack.s3_settings()) as store:
            assert not await store.list_keys(f"fleet/devices/{order}/")
            return await manifest_by_device(store, order)

    row = asyncio.run(rows())[f"{order}/0000001"]
    assert find(stack, "--device-id", f"{order}/0000001")["state"] == "built"
    for option, value in [("--serial", row["serial_num"]), ("--qr", row["qr_payload"]),
                          ("--dac-serial", row["dac_serial"])]:  # fmt: skip
        line = one_line_error(matterfab(stack, "device", "find", option, value))
        assert "is indexed yet" in line and "device reindex <order>" in line, line
    done = matterfab(stack, "device", "reindex", order)
    assert done.returncode == 0 and "3 devices indexed" in done.stdout, done.stdout + done.stderr
    for option, value in [("--serial", row["serial_num"]), ("--qr", row["qr_payload"]),
                          ("--dac-serial", row["dac_serial"])]:  # fmt: skip
        doc = find(stack, option, value)
        assert doc["device_id"] == f"{order}/0000001" and doc["state"] == "built", option
        assert doc["serial_num"] == row["serial_num"] and doc["dac_serial"] == row["dac_serial"]
