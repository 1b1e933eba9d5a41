"""Secrets stay secret, the store stays closed, and stored artifacts cannot be swapped.

One order runs through our own pipeline with every service at DEBUG; then:
- no passcode, DAC private key, PAI key (or KEK / S3 secret) appears in any service log line;
- DAC private keys are wrapped on mfg.devices.attested and in the index of each lot's dacs.lot,
  unwrap only with the right KEK and device context, and a flipped byte is caught (builder
  dead-letters the lot with reason `integrity`, writes nothing for it);
- S3 refuses a wrong secret and anonymous access; write-once objects refuse other bytes.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from matterfab import lots
from matterfab.config import KafkaSettings, S3Settings
from matterfab.errors import IntegrityError
from matterfab.keywrap import KeyWrapper
from matterfab.matter import nvs
from matterfab.messages import DEAD_LETTER, DEVICES_ATTESTED, IMAGES_READY, ORDER_EVENTS
from matterfab.refs import RefReader
from matterfab.s3 import AccessDenied, ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import manifest_doc
from tests.reliability.harness import (
    PROFILE,
    OwnPipeline,
    end_offsets,
    ensure_profile,
    exclusive_pipeline,
    manifest_rows,
    read_topic,
    rel_order,
    send,
    submit,
    wait_final,
    wait_until,
)
from tests.sealed import local_keys, open_if_sealed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INSTANCE = 75
ORDER = "SEC-1"
QUANTITY = 30
SERVICES = ("allocator", "signer", "builder", "assembler")


@pytest.fixture(scope="module")
def own(stack: LocalStack) -> Iterator[OwnPipeline]:
    """Our pipeline, every service logging at DEBUG."""
    ensure_profile(stack)
    with exclusive_pipeline(stack, INSTANCE, env={"MATTERFAB_LOG_LEVEL": "DEBUG"}) as services:
        yield services


@pytest.fixture(scope="module")
async def order(kafka_settings: KafkaSettings, own: OwnPipeline) -> dict[str, Any]:
    """SEC-1 made; the attested messages for it (offsets) recorded."""
    since = {t: await end_offsets(kafka_settings, t) for t in (DEVICES_ATTESTED, ORDER_EVENTS)}
    await submit(kafka_settings, rel_order(ORDER, QUANTITY), ORDER)
    final = await wait_final(kafka_settings, ORDER, since[ORDER_EVENTS], timeout=200)
    assert final.status == "completed", final
    return since


def kek(stack: LocalStack) -> bytes:
    return base64.b64decode((stack.home / "kek.b64").read_text().strip())


async def dac_keys(
    stack: LocalStack, store: ObjectStore, rows: list[dict[str, str]]
) -> dict[str, bytes]:
    """device_id -> raw DAC private scalar, read from the device's (sealed) partition."""
    out = {}
    keys = local_keys(stack.home)
    refs = {d["index"]: d["objects"] for d in (await manifest_doc(store, ORDER))["devices"]}
    reader = RefReader(store)  # each partition: its sealed piece of the lot's images.lot
    for row in rows:
        part = open_if_sealed(await reader.read(refs[row["index"]]["partition"]), keys)
        key = nvs.decode_partition(part)[nvs.NAMESPACE]["dac-key"][1]
        assert isinstance(key, bytes) and len(key) == 32
        out[row["device_id"]] = key
    return out


def forms(secret: bytes) -> list[str]:
    """Ways a leaked key would show in text: hex (both cases), base64 (std and url-safe)."""
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]


async def test_no_secret_in_any_log_line(
    stack: LocalStack, store: ObjectStore, order: dict[str, Any], own: OwnPipeline
) -> None:
    rows = await manifest_rows(store, ORDER)
    logs = {s: own.log(f"{s}-{INSTANCE}") for s in SERVICES}
    text = "\n".join(logs.values())
    # The logs are real: every service logged its work on this order at DEBUG level.
    for service, log in logs.items():
        assert '"batch handled"' in log, f"{service} logged nothing"
    assert ORDER in text
    leaks: list[str] = []
    for row in rows:
        passcode = int(row["passcode"])
        padded = f"{passcode:08d}"
        if re.search(rf"(?<!\d){padded}(?!\d)", text):
            leaks.append(f"passcode {padded} of {row['device_id']}")
        # Plain (unpadded) form: only where it cannot be a coincidence with a port or offset.
        if passcode >= 100_000 and re.search(rf"(?<!\d){passcode}(?!\d)", text):
            leaks.append(f"passcode {passcode} of {row['device_id']}")
    for device_id, key in (await dac_keys(stack, store, rows)).items():
        leaks += [f"DAC key of {device_id} ({f})" for f in forms(key) if f in text]
    pai_pem = (stack.home / "profiles" / PROFILE / "pai-key.pem").read_bytes()
    pai = serialization.load_pem_private_key(pai_pem, password=None)
    scalar = pai.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    leaks += [f"PAI key ({f})" for f in forms(scalar) if f in text]
    body = [line for line in pai_pem.decode().splitlines() if not line.startswith("-----")]
    leaks += ["PAI key PEM line" for line in body if line in text]
    leaks += [f"KEK ({f})" for f in forms(kek(stack)) if f in text]
    secret = stack.s3_settings().secret_key.get_secret_value()
    if secret in text:
        leaks.append("S3 secret key")
    assert leaks == [], leaks[:10]


async def test_dac_keys_travel_and_rest_wrapped(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, order: dict[str, Any]
) -> None:
    rows = await manifest_rows(store, ORDER)
    keys = await dac_keys(stack, store, rows)
    right = KeyWrapper(kek(stack))
    wrong = KeyWrapper(bytes(32))
    # On the wire: one record per lot; no key, not even wrapped: each device's DAC is its ref
    # into dacs.lot, where the builder reads the certificate and the wrapped key.
    attested: dict[str, tuple[str, dict[str, Any]]] = {}
    for rec in await read_topic(kafka_settings, DEVICES_ATTESTED, order[DEVICES_ATTESTED]):
        if rec.key.decode().startswith(ORDER + "/"):
            lot = json.loads(rec.value)
            for d in lot["devices"]:
                attested[f"{ORDER}/{d['index']:07d}"] = (rec.value.decode(), d)
    assert set(attested) == set(keys)
    for device_id, (raw, d) in attested.items():
        assert not any(f in raw for f in forms(keys[device_id])), "raw DAC key on the wire"
        assert d["dac_key_wrapped"] == d["dac_cert_b64"] == "" and d["dac"]["key"].endswith(
            "/dacs.lot"
        )
    # At rest: each lot's dacs.lot holds every DAC's key wrapped, in that piece's index entry,
    # bound to its device.
    other = rows[1]["device_id"]
    devices = json.loads(await store.get(f"orders/{ORDER}/manifest.json"))["devices"]
    seen = set()
    for key in sorted({d["objects"]["dac"]["key"] for d in devices}):
        body = await store.get(key)
        for e in lots.unpack(body, key).entries:
            device_id = f"{ORDER}/{e.index:07d}"
            assert not any(f.encode() in body for f in forms(keys[device_id]))
            assert e.name == "dac.der"
            assert set(e.meta) == {"dac-key-wrapped", "issued-at"}
            wrapped = e.meta["dac-key-wrapped"]
            assert right.unwrap(wrapped, f"dac-key:{device_id}") == keys[device_id]
            with pytest.raises(IntegrityError):
                wrong.unwrap(wrapped, f"dac-key:{device_id}")
            if device_id != other:
                with pytest.raises(IntegrityError):  # bound to its device: no copying it over
                    right.unwrap(wrapped, f"dac-key:{other}")
            seen.add(device_id)
    assert seen == set(keys)


async def test_tampered_wrapped_key_is_dead_lettered_and_nothing_written(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, order: dict[str, Any]
) -> None:
    wrapper = KeyWrapper(kek(stack))
    genuine = next(  # the order's first lot: its device 0 is the template
        json.loads(r.value)
        for r in await read_topic(kafka_settings, DEVICES_ATTESTED, order[DEVICES_ATTESTED])
        if r.key.decode() == f"{ORDER}/0000000"
    )
    # Its DAC and wrapped key come inline, as signers sent them before issue #26 (the builder
    # still takes that form): read from the order's dacs.lot.
    template = dict(genuine["devices"][0])
    stored = lots.unpack(await store.get(template["dac"]["key"]))
    (piece,) = [e for e in stored.entries if e.index == 0]
    template["dac_cert_b64"] = base64.b64encode(stored.cut(piece)).decode()
    key = wrapper.unwrap(piece.meta["dac-key-wrapped"], f"dac-key:{ORDER}/0000000")
    fake = "SEC-TAMPER"
    dl_since = await end_offsets(kafka_settings, DEAD_LETTER)
    ready_since = await end_offsets(kafka_settings, IMAGES_READY)
    sent = {}
    for index, tamper in ((0, True), (1, False)):  # two lots of one device each
        device_id = f"{fake}/{index:07d}"
        blob = bytearray(base64.b64decode(wrapper.wrap(key, f"dac-key:{device_id}")))
        if tamper:
            blob[20] ^= 0x01  # one bit of the ciphertext
        device = dict(
            template,
            index=index,
            serial_num=f"TAMPER-{index}",
            dac_key_wrapped=base64.b64encode(bytes(blob)).decode(),
        )
        msg = dict(genuine, order_id=fake, lot_id=device_id, quantity=2, devices=[device])
        meta = await send(kafka_settings, DEVICES_ATTESTED, json.dumps(msg).encode(), device_id)
        sent[index] = meta

    async def control_built() -> bool:
        return await store.exists(lots.lot_key(fake, 1, lots.LABELS))

    await wait_until(control_built, 60, "the untampered control device to be built")

    async def letter() -> Any:
        for d in [
            json.loads(r.value) for r in await read_topic(kafka_settings, DEAD_LETTER, dl_since)
        ]:
            if d["topic"] == DEVICES_ATTESTED and d["offset"] == sent[0].offset:
                return d
        return None

    dead = await wait_until(letter, 60, "the dead letter of the tampered lot")
    assert dead["service"] == "builder"
    assert dead["reason"] == "integrity"
    assert "failed authentication" in dead["errors"][0]["message"]
    assert dead["key"] == f"{fake}/0000000"
    assert await store.list_keys(f"orders/{fake}/devices/0000000/") == []
    assert await store.list_keys(f"orders/{fake}/lots/0000000/") == []
    ready = [
        r.key.decode()
        for r in await read_topic(kafka_settings, IMAGES_READY, ready_since)
        if r.key.decode().startswith(fake)
    ]
    assert ready == [f"{fake}/0000001"]


async def test_store_refuses_a_wrong_secret_and_anonymous_access(
    stack: LocalStack, store: ObjectStore, order: dict[str, Any]
) -> None:
    key = f"orders/{ORDER}/manifest.csv"
    assert await store.exists(key)
    good = stack.s3_settings()
    bad = S3Settings(**{**good.model_dump(), "secret_key": SecretStr("not-the-secret")})
    async with ObjectStore.open(bad) as intruder:
        for attempt in (
            intruder.get(key),
            intruder.list_keys("orders/"),
            intruder.put_once("orders/intruder.txt", b"x"),
        ):
            with pytest.raises(AccessDenied, match="refused the credentials"):
                await attempt
    base = f"{good.endpoint}/{good.bucket}"
    for method, url, data in (
        ("GET", f"{base}/{key}", None),
        ("GET", f"{base}?list-type=2", None),
        ("PUT", f"{base}/orders/anonymous.txt", b"x"),
        ("GET", good.endpoint + "/", None),  # list buckets
    ):
        request = urllib.request.Request(url, data=data, method=method)
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(request, timeout=10)
        assert http.value.code in (401, 403), (method, url, http.value.code)
    assert not await store.exists("orders/anonymous.txt")
    assert not await store.exists("orders/intruder.txt")


async def test_device_objects_are_write_once(store: ObjectStore, order: dict[str, Any]) -> None:
    for key in (
        lots.lot_key(ORDER, 0, lots.IMAGES),
        lots.lot_key(ORDER, 0, lots.DACS),
        lots.lot_key(ORDER, 0, lots.LABELS),
    ):
        original = await store.get(key)
        again = await store.put_once(key, original)
        assert not again.created  # a redelivery's identical write is a no-op
        swapped = bytearray(original)
        swapped[100] ^= 0xFF
        with pytest.raises(IntegrityError, match="already exists with different content"):
            await store.put_once(key, bytes(swapped))
        assert await store.get(key) == original
