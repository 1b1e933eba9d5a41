"""SIGKILL the builder, then the signer, between the PUTs of one lot (issues #13, #26).

The builder stores a lot in one round of two PUTs (the lot's `images.lot`, every device's
sealed `partition.bin`, and its `labels.lot`); the signer stores a lot's DACs as one
write-once `dacs.lot`. Here both reach the store through `S3FaultProxy`, which lets some of
a lot's PUTs through and holds the others, so the kill lands exactly between them, with no
fault hook in the services. After the kill each held PUT meets a fate a power cut can give
it: it lands after its writer died, never arrives, or arrives cut short. Then the service
restarts, unaware, and the order must complete with every device exactly once
(`check_order`, `matterfab verify`), with the DAC each device had before the kill: a
redelivered lot whose `dacs.lot` landed adopts those DACs, and the builder's rebuilt lot
finds its landed objects byte for byte as it makes them again (no integrity alarm, nothing
dead-lettered).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from matterfab.config import KafkaSettings
from matterfab.lots import DACS, IMAGES, LABELS, lot_key, unpack
from matterfab.matter.attestation import serial_hex
from matterfab.messages import (
    DEAD_LETTER,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
)
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.reliability.harness import (
    LOT_ENV,
    OwnPipeline,
    check_order,
    dead_letters,
    end_offsets,
    ensure_profile,
    exclusive_pipeline,
    issued_dacs,
    manifest_rows,
    rel_order,
    sigkill,
    submit,
    wait_final,
    wait_lots,
    wait_until,
)
from tests.reliability.s3proxy import CUT, DROP, LAND, Fate, Held, S3FaultProxy

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(300)]

QUANTITY = 160  # 10 lots of 16 (LOT_ENV)
INSTANCE = 75
DEVICE_TOPICS = (DEVICES_ALLOCATED, DEVICES_ATTESTED, IMAGES_READY)
FATES: tuple[Fate, ...] = (LAND, DROP, CUT)


@pytest.fixture(scope="module")
def proxy(stack: LocalStack) -> Iterator[S3FaultProxy]:
    """A fault proxy in front of the stack's store (stopped after the pipeline that uses it)."""
    s3 = stack.s3_settings()
    running = S3FaultProxy(s3.endpoint, s3.bucket)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def own(stack: LocalStack, proxy: S3FaultProxy) -> Iterator[OwnPipeline]:
    """Our pipeline, alone on the stack's groups; signer and builder reach S3 via the proxy."""
    ensure_profile(stack)
    s3 = stack.s3_settings()
    through = {
        "MATTERFAB_S3_ENDPOINT": proxy.endpoint,
        "MATTERFAB_S3_ACCESS_KEY": s3.access_key,
        "MATTERFAB_S3_SECRET_KEY": s3.secret_key.get_secret_value(),
        "MATTERFAB_S3_BUCKET": s3.bucket,
    }
    env = {"allocator": LOT_ENV, "signer": through, "builder": through}
    with exclusive_pipeline(stack, INSTANCE, per_service_env=env) as services:
        yield services


async def offsets(settings: KafkaSettings) -> dict[str, dict[int, int]]:
    """Log-end offsets now of every topic these tests read from a point on."""
    topics = (*DEVICE_TOPICS, ORDER_EVENTS, DEAD_LETTER)
    return {t: await end_offsets(settings, t) for t in topics}


async def stored(store: ObjectStore, keys: set[str]) -> dict[str, str]:
    """sha256 of those of `keys` that hold an object now."""
    found = await asyncio.gather(*(store.get_or_none(k) for k in sorted(keys)))
    return {
        k: hashlib.sha256(v).hexdigest()
        for k, v in zip(sorted(keys), found, strict=True)
        if v is not None
    }


def settle(proxy: S3FaultProxy, held: list[Held]) -> dict[str, Fate]:
    """Give the held PUTs their fates in turn (land, drop, cut, land, ...); key -> fate."""
    fates = {}
    for n, h in enumerate(held):
        fate = FATES[n % len(FATES)]
        proxy.decide(h, fate)
        fates[h.key] = fate
    return fates


async def finish(
    stack: LocalStack,
    store: ObjectStore,
    settings: KafkaSettings,
    order_id: str,
    since: dict[str, dict[int, int]],
) -> dict[str, Any]:
    """Wait for the order; check every invariant and that nothing of it was dead-lettered."""
    final = await wait_final(settings, order_id, since[ORDER_EVENTS], timeout=180)
    assert final.status == "completed", final
    result = await check_order(
        stack, store, settings, order_id, QUANTITY, since={t: since[t] for t in DEVICE_TOPICS}
    )
    assert result.lost == 0 and result.duplicates == 0
    letters = [
        d
        for d in await dead_letters(settings, since[DEAD_LETTER])
        if str(d.get("key", "")).split("/")[0] == order_id
    ]
    assert not letters, f"dead-lettered: {[(d['service'], d['reason']) for d in letters][:3]}"
    return result.__dict__


async def test_builder_killed_between_the_puts_of_a_lot(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    own: OwnPipeline,
    proxy: S3FaultProxy,
) -> None:
    """A lot's two PUTs held; SIGKILL; one lands after the kill, the other never arrives."""
    order_id = "REL-LOT-PUTS-BUILD"
    builder = f"builder-{INSTANCE}"
    since = await offsets(kafka_settings)
    own.stop(builder)  # the order waits, signed, on mfg.devices.attested: its lots are known
    started = time.monotonic()
    await submit(kafka_settings, rel_order(order_id, QUANTITY), order_id)
    lots = await wait_lots(
        kafka_settings, DEVICES_ATTESTED, order_id, QUANTITY, since[DEVICES_ATTESTED]
    )
    issued = await issued_dacs(store, order_id)
    assert len(issued) == QUANTITY
    first = sorted(lots)[len(lots) // 2]
    victim = lots[first]
    # The lot's round is two PUTs (issue #26): images.lot (every device's sealed partition)
    # and labels.lot. Both held: one lands after the kill, the other never arrives.
    targets = {lot_key(order_id, first, IMAGES), lot_key(order_id, first, LABELS)}
    rule = proxy.arm(lambda method, key: method == "PUT" and key in targets)
    own.start("builder", INSTANCE)

    async def round_reached() -> bool:  # both PUTs of the lot's round: passed or held
        return len(rule.passed) + len(proxy.held()) >= len(targets)

    await wait_until(round_reached, 120, f"the PUTs of lot {first:07d} at the proxy", 0.02)
    await wait_until(
        lambda: _all_stored(store, set(rule.passed)), 30, "the PUTs let through to land"
    )
    kill = sigkill(stack, builder)
    held = proxy.held()
    assert held, "nothing of the lot was held: the kill was not between its PUTs"
    fates = settle(proxy, held)
    proxy.disarm()
    at_restart = await stored(store, targets)
    # The lot is half-written: what passed and what landed late is there, nothing else.
    expect = set(rule.passed) | {k for k, f in fates.items() if f == LAND}
    assert set(at_restart) == expect, (
        f"stored {sorted(at_restart)}, expected {sorted(expect)} (a PUT cut short must leave "
        "no object)"
    )
    assert targets - set(at_restart), "every object of the lot stored before the restart"
    own.start("builder", INSTANCE)
    result = await finish(stack, store, kafka_settings, order_id, since)
    # The restarted builder rebuilt the lot to the same bytes: what was stored is kept as is.
    assert await stored(store, set(at_restart)) == at_restart
    assert await issued_dacs(store, order_id) == issued
    report = {
        "order": order_id,
        "lot": first,
        "devices_in_lot": len(victim),
        "let_through": sorted(rule.passed),
        "fates": fates,
        "orphans": kill.orphans,
        "check": result,
        "total_s": round(time.monotonic() - started, 1),
    }
    print(f"\nbuilder SIGKILL between a lot's PUTs: {json.dumps(report)}")
    assert kill.orphans == [], "worker processes outlived the SIGKILLed builder"


async def test_signer_killed_while_lots_of_dacs_are_stored(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    own: OwnPipeline,
    proxy: S3FaultProxy,
) -> None:
    """dacs.lot PUTs held; SIGKILL; one lands after the kill (adopted), one vanishes, one breaks."""
    order_id = "REL-LOT-PUTS-SIGN"
    signer = f"signer-{INSTANCE}"
    since = await offsets(kafka_settings)
    own.stop(signer)  # the order's lots wait on mfg.devices.allocated: they are known
    started = time.monotonic()
    await submit(kafka_settings, rel_order(order_id, QUANTITY), order_id)
    lots = await wait_lots(
        kafka_settings, DEVICES_ALLOCATED, order_id, QUANTITY, since[DEVICES_ALLOCATED]
    )
    firsts = sorted(lots)
    victims = [firsts[1], firsts[len(firsts) // 2], firsts[-1]]
    targets = {lot_key(order_id, f, DACS) for f in victims}
    proxy.arm(lambda method, key: method == "PUT" and key in targets)
    own.start("signer", INSTANCE)
    await proxy.wait_held(1, 120)
    with contextlib.suppress(AssertionError):  # the signer takes a batch's lots concurrently
        await proxy.wait_held(len(targets), 10)
    await asyncio.sleep(0.5)  # the rest of its batch is signed, stored and announced meanwhile
    kill = sigkill(stack, signer)
    assert kill.orphans == []
    fates = settle(proxy, proxy.held())
    proxy.disarm()
    # Before the restart: the DACs stored so far, with the late-landed lot's among them.
    before = await issued_dacs(store, order_id)
    serials: dict[int, str] = {}
    for key, fate in fates.items():
        body = await store.get_or_none(key)
        assert (body is not None) == (fate == LAND), f"{key}: {fate}, stored: {body is not None}"
        if body is None:
            continue
        lot = unpack(body, key)
        for e in lot.entries:
            cert = x509.load_der_x509_certificate(lot.cut(e))
            serials[e.index] = serial_hex(cert.serial_number)
    assert serials, f"no dacs.lot landed after the kill: fates {fates}"
    own.start("signer", INSTANCE)
    result = await finish(stack, store, kafka_settings, order_id, since)
    # Adopted: every DAC stored before the restart is still the device's, its serial the same.
    after = await issued_dacs(store, order_id)
    assert {i: after[i] for i in before} == before
    rows = {int(r["index"]): r for r in await manifest_rows(store, order_id)}
    assert {i: rows[i]["dac_serial"] for i in serials} == serials
    report = {
        "order": order_id,
        "fates": fates,
        "dacs_before_restart": len(before),
        "adopted_after_late_landing": len(serials),
        "check": result,
        "total_s": round(time.monotonic() - started, 1),
    }
    print(f"\nsigner SIGKILL while storing lots of DACs: {json.dumps(report)}")


async def _all_stored(store: ObjectStore, keys: set[str]) -> bool:
    return len(await stored(store, keys)) == len(keys)
