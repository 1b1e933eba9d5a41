"""dac_storage device-key: the CSR core, the signer's request handler, the builder and devsim.

The handler runs on the in-memory store (write-once semantics kept); DACs are checked with the
project's verify_dac and with the OpenSSL CLI (an independent implementation); CSRs come from
the device simulator, the program that stands where the chip stands.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import profiles
from matterfab.errors import IntegrityError, InvalidInput
from matterfab.fleet import index as fleet_index
from matterfab.fleet import keys as fleet_keys
from matterfab.fleet.records import CertifyGrant, DeviceImage
from matterfab.keywrap import KeyWrapper
from matterfab.lines import ensure_local_line
from matterfab.matter import attestation, csr, nvs_reader, secure_cert
from matterfab.messages import (
    DAC_LEDGER,
    DAC_REPLIES,
    DEVICES_ATTESTED,
    IMAGES_READY,
    LotAllocated,
    StationResult,
)
from matterfab.messages.base import order_key
from matterfab.messages.dac_requests import DacReply, DacRequest
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader
from matterfab.services.builder.service import Builder
from matterfab.services.signer.dac_requests import DeviceKeyIssuer
from matterfab.services.signer.service import Signer
from tests.sealed import local_keys, open_if_sealed

VID, PID = 0xFFF1, 0x8001
ORDER = "DK-1"
DAC_KEYS = {"dac-cert", "dac-key", "dac-pub-key", "pai-cert"}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("dk", VID, PID, profiles_dir=path)
    return path


def order_doc(mode: str = "device-key", order_id: str = ORDER, quantity: int = 4) -> bytes:
    return json.dumps(
        {
            "order_id": order_id,
            "quantity": quantity,
            "product": {"vendor_id": VID, "product_id": PID},
            "attestation_profile": "dk",
            "dac_storage": mode,
        }
    ).encode()


@pytest.fixture
async def line(profile_dir: Path, tmp_path: Path) -> SimpleNamespace:
    store = MemoryObjectStore()
    await ensure_local_line(store, tmp_path)  # as `matterfab up` does: line local, its key
    await store.put_once(order_key(ORDER, "order.json"), order_doc())
    wrapper = KeyWrapper(os.urandom(32))
    signer = Signer(store, wrapper, profiles_dir=profile_dir)
    return SimpleNamespace(
        keys=local_keys(tmp_path),
        store=store,
        signer=signer,
        issuer=DeviceKeyIssuer(signer),
        builder=Builder(store, wrapper, None),
        pai=profiles.load_profile("dk", profile_dir).require_pai(),
    )


def devsim(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matterfab.devsim", *args, "--state", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )


def device_csr(state: Path, device: str, *extra: str) -> str:
    out = devsim(state, "csr", "--device", device, *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout


def request(index: int, pem: str, order_id: str = ORDER) -> DacRequest:
    return DacRequest(
        request_id=uuid.uuid4().hex,
        order_id=order_id,
        device_id=f"{order_id}/{index:07d}",
        index=index,
        serial_num=f"SN-{index}",
        station_id="S1",
        line="L1",
        csr_pem=pem,
    )


async def ask(line: SimpleNamespace, req: DacRequest) -> DacReply:
    (emit,) = await line.issuer.handle_request(req)
    assert emit.topic == DAC_REPLIES and emit.key == req.device_id
    reply = emit.message
    assert isinstance(reply, DacReply) and reply.request_id == req.request_id
    return reply


# --- the pure core -----------------------------------------------------------------------


def test_extract_finds_exactly_one_csr_among_log_lines(tmp_path: Path) -> None:
    output = device_csr(tmp_path, "A/0000000")
    pem = csr.extract_csr_pem(output)
    assert pem.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    checked = csr.check_csr(pem)
    assert len(checked.public_key_raw) == 65
    with pytest.raises(InvalidInput, match="printed no PEM CERTIFICATE REQUEST"):
        csr.extract_csr_pem(device_csr(tmp_path, "A/0000000", "--fault", "none"))
    with pytest.raises(InvalidInput, match="printed 2 CSRs, must print exactly one"):
        csr.extract_csr_pem(device_csr(tmp_path, "A/0000000", "--fault", "two"))


def test_check_refuses_a_forged_signature_and_other_curves(tmp_path: Path) -> None:
    forged = csr.extract_csr_pem(device_csr(tmp_path, "A/0000001", "--fault", "forge"))
    # OpenSSL agrees that the self-signature is broken.
    verdict = subprocess.run(
        ["openssl", "req", "-verify", "-noout"], input=forged, capture_output=True, text=True
    )
    assert "verify failure" in verdict.stdout + verdict.stderr
    with pytest.raises(InvalidInput, match="self-signature does not verify"):
        csr.check_csr(forged)
    p384 = csr.extract_csr_pem(device_csr(tmp_path, "A/0000001", "--fault", "p384"))
    with pytest.raises(InvalidInput, match="must be EC P-256 \\(secp256r1\\), not secp384r1"):
        csr.check_csr(p384)
    with pytest.raises(InvalidInput, match="not a well-formed PEM"):
        csr.check_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )


def test_dac_over_a_device_key_follows_the_profile_rules(line: SimpleNamespace) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    profile = profiles.load_profile("dk", line.signer.profiles_dir)
    cert = csr.issue_dac_for_key(
        public_key=key.public_key(),
        pai_cert=line.pai,
        signer=profile.signer(),
        vendor_id=VID,
        product_id=PID,
        not_before=datetime.now(UTC),
        not_after=None,
    )
    attestation.verify_dac(cert, line.pai, vendor_id=VID, product_id=PID)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert csr.dac_over_key(der, csr.public_key_raw(key.public_key()))
    other = ec.generate_private_key(ec.SECP256R1())
    assert not csr.dac_over_key(der, csr.public_key_raw(other.public_key()))


# --- the signer ----------------------------------------------------------------------------


async def test_issue_retry_and_refusals(line: SimpleNamespace, tmp_path: Path) -> None:
    pem = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000000"))
    first = await ask(line, request(0, pem))
    assert first.status == "issued" and first.reason == ""
    dac_der = base64.b64decode(first.dac_b64)
    dac = x509.load_der_x509_certificate(dac_der)
    attestation.verify_dac(dac, line.pai, vendor_id=VID, product_id=PID)
    assert csr.dac_over_key(dac_der, csr.check_csr(pem).public_key_raw)
    assert first.dac_sha256 == hashlib.sha256(dac_der).hexdigest()
    assert first.dac_serial == attestation.serial_hex(dac.serial_number)
    assert base64.b64decode(first.pai_b64) == line.pai.public_bytes(serialization.Encoding.DER)

    # A retry with the same key (the station timed out): the same DAC, nothing new issued.
    again = await ask(line, request(0, pem))
    assert (again.status, again.dac_b64, again.dac_serial) == (
        "issued",
        first.dac_b64,
        first.dac_serial,
    )

    # The same device with another key: refused, naming the DAC it holds.
    other = csr.extract_csr_pem(device_csr(tmp_path, "elsewhere"))
    refused = await ask(line, request(0, other))
    assert refused.status == "refused" and refused.dac_b64 == ""
    assert (
        refused.reason == f"{ORDER}/0000000 already holds DAC {first.dac_serial} over another key"
    )

    # Another device presenting the first device's key (a cloned chip): refused, naming it.
    clone = csr.extract_csr_pem(
        device_csr(tmp_path, f"{ORDER}/0000001", "--key-of", f"{ORDER}/0000000")
    )
    dup = await ask(line, request(1, clone))
    assert dup.status == "refused"
    assert dup.reason == (
        f"public key already certified for product {VID:04X}/{PID:04X}: "
        f"held by device {ORDER}/0000000"
    )
    # Forged and non-P-256 CSRs: refused in one line, nothing stored for the device.
    forged = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000002", "--fault", "forge"))
    bad = await ask(line, request(2, forged))
    assert bad.status == "refused" and "self-signature does not verify" in bad.reason
    assert "\n" not in bad.reason
    p384 = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000002", "--fault", "p384"))
    assert "P-256" in (await ask(line, request(2, p384))).reason
    assert await line.store.list_keys(f"orders/{ORDER}/device-dacs/0000002/") == []
    # The device may still get its DAC once it sends a good CSR.
    good = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000002"))
    assert (await ask(line, request(2, good))).status == "issued"


async def test_refuses_orders_that_are_not_device_key(
    line: SimpleNamespace, tmp_path: Path
) -> None:
    await line.store.put_once(order_key("NVS-1", "order.json"), order_doc("factory-nvs", "NVS-1"))
    pem = csr.extract_csr_pem(device_csr(tmp_path, "x"))
    reply = await ask(line, request(0, pem, order_id="NVS-1"))
    assert reply.reason == "order NVS-1 is dac_storage factory-nvs, not device-key"
    reply = await ask(line, request(0, pem, order_id="NOPE"))
    assert reply.reason == "order NOPE is unknown to the signer"
    reply = await ask(line, request(9, pem))
    assert reply.reason == f"{ORDER}/0000009 is not a device of order {ORDER}"


async def test_requests_that_arrive_together_are_signed_together(
    line: SimpleNamespace, tmp_path: Path
) -> None:
    pems = [csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/{i:07d}")) for i in range(4)]
    replies = await asyncio.gather(*(ask(line, request(i, p)) for i, p in enumerate(pems)))
    assert [r.status for r in replies] == ["issued"] * 4
    assert len({r.dac_serial for r in replies}) == 4
    assert line.issuer.batch.batches == [4]


async def test_racing_requests_for_one_device_get_one_dac(
    line: SimpleNamespace, tmp_path: Path
) -> None:
    pem = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000003"))
    other = DeviceKeyIssuer(line.signer)  # a second signer instance on the same bucket
    a, b = await asyncio.gather(
        line.issuer.handle_request(request(3, pem)), other.handle_request(request(3, pem))
    )
    assert a[0].message.dac_serial == b[0].message.dac_serial != ""
    assert len(await line.store.list_keys(f"orders/{ORDER}/device-dacs/0000003/")) == 1


async def test_ledger_lists_a_dac_only_once_the_station_bound_it(
    line: SimpleNamespace, tmp_path: Path
) -> None:
    pem = csr.extract_csr_pem(device_csr(tmp_path, f"{ORDER}/0000000"))
    reply = await ask(line, request(0, pem))
    base = {
        "order_id": ORDER,
        "device_id": f"{ORDER}/0000000",
        "index": 0,
        "serial_num": "SN-0",
        "station_id": "S1",
        "line": "L1",
        "mac": "02:00:00:00:00:01",
    }
    line.issuer.index_waits = 0  # no assembler here: nothing to wait for
    failed = StationResult(**base, status="failed", reason="cert command exited 1")
    assert await line.issuer.handle_result(failed) == []
    unbound = StationResult(**base, status="flashed")
    assert await line.issuer.handle_result(unbound) == []
    bound = StationResult(
        **base, status="flashed", dac_serial=reply.dac_serial, dac_sha256=reply.dac_sha256
    )
    (emit,) = await line.issuer.handle_result(bound)
    assert emit.topic == DAC_LEDGER
    (entry,) = emit.message.dacs
    assert (entry.dac_serial, entry.dac_sha256) == (reply.dac_serial, reply.dac_sha256)
    forged = StationResult(**{**base, "status": "flashed", "dac_serial": "0badc0de"})
    with pytest.raises(IntegrityError, match="which the signer never issued to it"):
        await line.issuer.handle_result(forged)


# --- signer lot pass-through and builder ----------------------------------------------------


async def test_device_key_lot_issues_nothing_and_builds_no_dac(line: SimpleNamespace) -> None:
    lot = LotAllocated(
        order_id=ORDER,
        lot_id=f"{ORDER}/0000000",
        quantity=4,
        product={"vendor_id": VID, "product_id": PID},
        mfg_date="2026-12-07",
        attestation_profile="dk",
        iteration_count=1000,
        flow="standard",
        discovery=["ble"],
        partition_size=0x6000,
        dac_storage="device-key",
        devices=[
            {
                "index": 0,
                "serial_num": "SN-0",
                "discriminator": 10,
                "passcode": 20202021,
                "salt_b64": base64.b64encode(bytes(32)).decode(),
            }
        ],
    )
    emits = await line.signer.handle(lot)
    assert [e.topic for e in emits] == [DEVICES_ATTESTED]  # no ledger, no dacs.lot
    assert await line.store.list_keys(f"orders/{ORDER}/lots/") == []
    (image,) = [e.message for e in await line.builder.handle(emits[0].message)]
    assert image.dac_serial == "" and image.objects.dac is None
    assert image.objects.secure_cert is None
    partition = open_if_sealed(await RefReader(line.store).read(image.objects.partition), line.keys)
    factory = nvs_reader.decode_partition(partition)
    assert not DAC_KEYS & set(factory["chip-factory"])
    assert "cert-dclrn" in factory["chip-factory"]
    assert [e.topic for e in await line.builder.handle(emits[0].message)] == [IMAGES_READY]


# --- the simulator -------------------------------------------------------------------------


def test_devsim_accepts_only_a_dac_over_its_own_key(line: SimpleNamespace, tmp_path: Path) -> None:
    profile = profiles.load_profile("dk", line.signer.profiles_dir)

    def dac_for(pem: str) -> bytes:
        cert = csr.issue_dac_for_key(
            public_key=csr.check_csr(pem).public_key,
            pai_cert=line.pai,
            signer=profile.signer(),
            vendor_id=VID,
            product_id=PID,
            not_before=datetime.now(UTC),
            not_after=None,
        )
        return cert.public_bytes(serialization.Encoding.DER)

    own = dac_for(csr.extract_csr_pem(device_csr(tmp_path, "D/1")))
    foreign = dac_for(csr.extract_csr_pem(device_csr(tmp_path, "D/2")))
    pai = line.pai.public_bytes(serialization.Encoding.DER)
    (tmp_path / "pai.der").write_bytes(pai)
    (tmp_path / "own.der").write_bytes(own)
    (tmp_path / "foreign.der").write_bytes(foreign)
    (tmp_path / "sc.bin").write_bytes(secure_cert.build_certs_only(own, pai))
    common = ("--device", "D/1", "--pai", str(tmp_path / "pai.der"))
    bad = devsim(tmp_path, "write", *common, "--dac", str(tmp_path / "foreign.der"))
    assert bad.returncode == 1
    assert bad.stderr.strip() == "devsim: refused: the DAC is not over device D/1's key"
    ok = devsim(
        tmp_path,
        "write",
        *common,
        "--dac",
        str(tmp_path / "own.der"),
        "--secure-cert",
        str(tmp_path / "sc.bin"),
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "D_1" / "dac.der").read_bytes() == own
    entries = secure_cert.decode_entries((tmp_path / "sc.bin").read_bytes())
    assert [e.type for e in entries] == [secure_cert.TlvType.DEV_CERT, secure_cert.TlvType.CA_CERT]


# --- the station's settings and templates ---------------------------------------------------


def test_station_templates_and_settings() -> None:
    from matterfab.services.station import device_key
    from matterfab.services.station.config import load_settings

    argv = device_key.render(
        "csr_cmd",
        "tool csr --port {port} --id {device_id} --mac={mac}",
        device_key.CSR_PLACEHOLDERS,
        {"port": "/dev/ttyUSB0", "device_id": "O/0000001", "mac": "02:00:00:00:00:01"},
    )
    assert argv == [
        "tool",
        "csr",
        "--port",
        "/dev/ttyUSB0",
        "--id",
        "O/0000001",
        "--mac=02:00:00:00:00:01",
    ]
    with pytest.raises(InvalidInput, match=r"cert_cmd: unknown placeholder \{partition\}"):
        device_key.check_template("cert_cmd", "w {partition}", device_key.CERT_PLACEHOLDERS)
    with pytest.raises(InvalidInput, match=r"placeholder \{chip\} has no value for this device"):
        device_key.render("csr_cmd", "t {chip}", device_key.CSR_PLACEHOLDERS, {"chip": None})
    base = {"station_id": "S1", "line": "L1", "out": Path("x")}
    with pytest.raises(InvalidInput, match="give both csr_cmd and cert_cmd"):
        load_settings(**base, csr_cmd="t {port}")
    with pytest.raises(InvalidInput, match=r"unknown placeholder \{dac\}"):
        load_settings(**base, csr_cmd="t {dac}", cert_cmd="w {dac}")
    settings = load_settings(**base, csr_cmd="t {mac}", cert_cmd="w {dac} {pai} {secure_cert}")
    assert settings.dac_timeout == 15.0


async def test_a_bound_dac_is_indexed_and_a_reissued_device_may_present_a_new_key(
    line: SimpleNamespace, tmp_path: Path
) -> None:
    device_id = f"{ORDER}/0000002"
    # The assembler's generation-0 record of the device (no DAC yet: device-key).
    base = DeviceImage(
        device_id=device_id,
        order_id=ORDER,
        index=2,
        generation=0,
        serial_num="SN-2",
        vendor_id=VID,
        product_id=PID,
        discriminator=2,
        qr_payload="MT:Y.K906PF15YZ.548G00",
        manual_code="34970112332",
        dac_serial="",
    )
    await fleet_index.record_image(line.store, base)
    first = await ask(line, request(2, csr.extract_csr_pem(device_csr(tmp_path, device_id))))
    bound = StationResult(
        order_id=ORDER,
        device_id=device_id,
        index=2,
        serial_num="SN-2",
        station_id="S1",
        line="L1",
        status="flashed",
        mac="02:00:00:00:00:02",
        dac_serial=first.dac_serial,
        dac_sha256=first.dac_sha256,
    )
    await line.issuer.handle_result(bound)
    view = await fleet_index.device_view(line.store, device_id)
    assert view.image is not None and view.image.dac_serial == first.dac_serial
    assert await fleet_index.resolve(line.store, "dac_serial", first.dac_serial) == device_id

    # A new key for the device: refused, until `device reissue` grants generation 1.
    other_state = tmp_path / "new-module"
    new_pem = csr.extract_csr_pem(device_csr(other_state, device_id))
    assert (await ask(line, request(2, new_pem))).status == "refused"
    grant = CertifyGrant(
        device_id=device_id, generation=1, revoked_dac_serial=first.dac_serial, by="test"
    )
    await line.store.put_once(fleet_keys.certify_key(ORDER, 2, 1), grant.to_bytes())
    second = await ask(line, request(2, new_pem))
    assert second.status == "issued" and second.dac_serial != first.dac_serial
    again = await ask(line, request(2, new_pem))  # a retry of generation 1: the same DAC
    assert again.dac_serial == second.dac_serial
