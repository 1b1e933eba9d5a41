"""SIGKILL each pipeline service in the middle of an order and restart it: nothing lost or doubled.

Also: poison messages on every input topic are dead-lettered and the pipeline goes on.

After each kill, before the restart, the frozen state proves "no offset is committed before the
work it stands for is durable": every input record below the victim's committed offset has its
output in the bucket and on the next topic. Between allocator, signer and builder a record is a
lot (issue #13): a committed lot must have its `dacs.lot` (signer) or its `images.lot`
(every device's `partition.bin`, issue #26) and its `labels.lot` (builder), and its devices
announced downstream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.lots import DACS, IMAGES, LABELS, lot_key
from matterfab.messages import (
    DEAD_LETTER,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    STATION_RESULTS,
    WORK_ORDERS,
)
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.reliability.harness import (
    LOT_ENV,
    OwnPipeline,
    check_order,
    count_objects,
    dead_letters,
    end_offsets,
    ensure_profile,
    exclusive_pipeline,
    of_order,
    order_events,
    read_topic,
    record_devices,
    rel_order,
    send,
    sigkill,
    submit,
    wait_final,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(300)]

QUANTITY = 400
# The signer signs a lot in a few ms and commits per batch (32 lots by default): a whole order
# of 25 lots is one batch, so a kill mid-order found nothing committed and the durable check
# below covered no record. Batches of 2 lots commit mid-order; the kill follows such a commit.
SIGNER_ENV = {"MATTERFAB_SIGNER_MAX_BATCH": "2"}
INSTANCE = 71
GROUPS = {
    "allocator": ("matterfab-allocator", WORK_ORDERS),
    "signer": ("matterfab-signer", DEVICES_ALLOCATED),
    "builder": ("matterfab-builder", DEVICES_ATTESTED),
    "assembler": ("matterfab-assembler", IMAGES_READY),
}
DEVICE_TOPICS = (DEVICES_ALLOCATED, DEVICES_ATTESTED, IMAGES_READY)
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def own(stack: LocalStack) -> Iterator[OwnPipeline]:
    """Our pipeline, alone on the stack's consumer groups."""
    ensure_profile(stack)
    env = {"allocator": LOT_ENV, "signer": SIGNER_ENV}
    with exclusive_pipeline(stack, INSTANCE, per_service_env=env) as services:
        yield services


async def committed(settings: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic`."""
    offsets = await kafka.committed_offsets(settings, group)
    return {tp.partition: off for tp, off in offsets.items() if tp.topic == topic}


async def committed_records(
    settings: KafkaSettings, group: str, topic: str, since: dict[int, int], order_id: str
) -> list[Any]:
    """This order's records on `topic` from `since` that `group` has committed."""
    done = await committed(settings, group, topic)
    return [
        r
        for r in await read_topic(settings, topic, since)
        if r.offset < done.get(r.partition, 0) and of_order(r, order_id)
    ]


async def moment(victim: str, store: ObjectStore, settings: KafkaSettings, order_id: str) -> None:
    """Wait for a point in the middle of the order where killing `victim` hurts most."""
    if victim == "allocator":
        # The allocator has started on the order (order.json written) but is it done? Kill now.
        await wait_until(
            lambda: store.exists(f"orders/{order_id}/order.json"), 60, "order.json", 0.01
        )
    elif victim == "signer":
        since_allocated = _SINCE[order_id][DEVICES_ALLOCATED]

        # Right after a commit of the signer group that covers part of this order.
        async def signer_commit_seen() -> bool:
            recs = await committed_records(
                settings, "matterfab-signer", DEVICES_ALLOCATED, since_allocated, order_id
            )
            return len({d for r in recs for d in record_devices(r)}) >= 60

        await wait_until(signer_commit_seen, 90, "a signer commit covering 60 devices", 0.02)
    elif victim == "builder":
        since_attested = _SINCE[order_id][DEVICES_ATTESTED]

        # Right after a commit of the builder group that covers part of this order.
        async def commit_seen() -> bool:
            recs = await committed_records(
                settings, "matterfab-builder", DEVICES_ATTESTED, since_attested, order_id
            )
            return len({d for r in recs for d in record_devices(r)}) >= 30

        await wait_until(commit_seen, 120, "a builder commit covering 30 devices", 0.05)
    else:

        async def progressed() -> bool:
            events = await order_events(settings, order_id, _SINCE[order_id][ORDER_EVENTS])
            return any(e.status == "progress" and e.ready >= 60 for e in events)

        await wait_until(progressed, 120, "progress >= 60", 0.1)


_SINCE: dict[str, dict[str, dict[int, int]]] = {}


async def assert_committed_work_durable(
    victim: str, store: ObjectStore, settings: KafkaSettings, order_id: str
) -> int:
    """Every record the dead victim committed has its output stored / emitted; how many."""
    group, topic = GROUPS[victim]
    since = _SINCE[order_id]
    records = await committed_records(settings, group, topic, since[topic], order_id)
    if victim == "allocator":
        if records:
            assert await store.exists(f"orders/{order_id}/allocation/00000.json")
            allocated = {
                d
                for r in await read_topic(settings, DEVICES_ALLOCATED, since[DEVICES_ALLOCATED])
                if of_order(r, order_id)
                for d in record_devices(r)
            }
            assert len(allocated) == QUANTITY, "order committed before all devices were sent"
        return len(records)
    next_topic = {"signer": DEVICES_ATTESTED, "builder": IMAGES_READY}.get(victim)
    emitted = set()
    if next_topic:  # the devices announced downstream (lot messages carry several)
        emitted = {
            d
            for r in await read_topic(settings, next_topic, since[next_topic])
            if of_order(r, order_id)
            for d in record_devices(r)
        }
    keys = set(await store.list_keys(f"orders/{order_id}/"))
    for r in records if victim in ("signer", "builder") else []:
        # A lot, keyed by its first device's id: its lot object, then each of its devices.
        first = int(r.key.decode().split("/")[1])
        own = lot_key(order_id, first, DACS if victim == "signer" else LABELS)
        assert own in keys, f"lot {first:07d} committed without {own}"
        if victim == "builder":  # every device's partition is a piece of the lot's images.lot
            images = lot_key(order_id, first, IMAGES)
            assert images in keys, f"lot {first:07d} committed without {images}"
        for device_id in record_devices(r):
            assert device_id in emitted, f"{device_id} committed but never announced"
    if victim == "assembler":
        # The assembler holds images in memory until it stores them as a chunk, and only then
        # commits: every committed image must be in a stored chunk.
        chunked: set[str] = set()
        for key in keys:
            if key.startswith(f"orders/{order_id}/ready/"):
                chunked |= {r["device_id"] for r in json.loads(await store.get(key))["records"]}
        lost = {r.key.decode() for r in records} - chunked
        assert not lost, f"committed but in no chunk: {sorted(lost)[:5]}"
    if victim == "assembler" and len({r.key for r in records}) == QUANTITY:
        # Every image committed: the manifest must exist, else nobody would ever write it.
        assert f"orders/{order_id}/manifest.json" in keys
    return len(records)


async def test_sigkill_each_service_in_turn_loses_and_duplicates_nothing(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    own: OwnPipeline,
) -> None:
    """One order; allocator, signer, builder, assembler each SIGKILLed mid-way and restarted."""
    order_id = "REL-KILL-ALL"
    since = {t: await end_offsets(kafka_settings, t) for t in (*DEVICE_TOPICS, ORDER_EVENTS)}
    since[WORK_ORDERS] = await end_offsets(kafka_settings, WORK_ORDERS)
    _SINCE[order_id] = since
    started = time.monotonic()
    await submit(kafka_settings, rel_order(order_id, QUANTITY), order_id)
    kills = []
    for victim in ("allocator", "signer", "builder", "assembler"):
        await moment(victim, store, kafka_settings, order_id)
        kill = sigkill(stack, f"{victim}-{INSTANCE}")
        at = round(time.monotonic() - started, 1)
        ready = await count_objects(store, order_id, "partition.bin")
        await asyncio.sleep(0.5)  # anything in flight at the store lands now or never
        durable = await assert_committed_work_durable(victim, store, kafka_settings, order_id)
        own.start(victim, INSTANCE)
        if victim in ("signer", "builder"):  # killed right after a commit of theirs
            assert durable > 0, f"{victim}: killed with nothing committed: the check checked none"
        kills.append(
            {
                "victim": victim,
                "at_s": at,
                "images_ready_at_kill": ready,
                "committed_records_checked": durable,
                "orphans": kill.orphans,
            }
        )
    final = await wait_final(kafka_settings, order_id, since[ORDER_EVENTS], timeout=240)
    assert final.status == "completed", final
    assert final.quantity == QUANTITY
    result = await check_order(
        stack,
        store,
        kafka_settings,
        order_id,
        QUANTITY,
        since={t: since[t] for t in DEVICE_TOPICS},
    )
    assert result.lost == 0 and result.duplicates == 0
    RESULTS.update(kills=kills, check=result.__dict__, total_s=round(time.monotonic() - started))
    print(f"\nSIGKILL in turn: {json.dumps(RESULTS)}")
    for k in kills:
        assert k["orphans"] == [], f"{k['victim']}: processes outlived their SIGKILLed parent"


POISON_ORDER_QUANTITY = 300
CONSUMERS = {
    WORK_ORDERS: ("allocator", "work-order/v1"),
    DEVICES_ALLOCATED: ("signer", "lot-allocated/v1"),
    DEVICES_ATTESTED: ("builder", "lot-attested/v1"),
    IMAGES_READY: ("assembler", "image-ready/v1"),
    STATION_RESULTS: ("assembler", "station-result/v1"),
}
ALSO_CONSUMED_BY = {STATION_RESULTS: ("signer-dac",)}
# The field a message of that type without it is refused for (lot messages: their lot_id).
REQUIRED = {DEVICES_ALLOCATED: "lot_id", DEVICES_ATTESTED: "lot_id"}


def poisons(topic: str) -> list[tuple[bytes, str, str]]:
    """(value, expected error field, expected words in its message) for one input topic."""
    _, kind = CONSUMERS[topic]
    out = [
        (b"\xff\xfe{not json", "$", "is not valid UTF-8 JSON"),
        (b"[1, 2, 3]", "$", "must be a JSON object"),
    ]
    if topic == WORK_ORDERS:
        # Without a usable order_id the allocator cannot answer on mfg.order-events.
        out.append((json.dumps({"type": "bogus/v9"}).encode(), "order_id", "is required"))
        out.append((json.dumps({"type": kind, "order_id": 7}).encode(), "order_id", "is required"))
    else:
        out.append((json.dumps({"type": "bogus/v9"}).encode(), "type", "unknown message type"))
        missing = REQUIRED.get(topic, "device_id")
        out.append((json.dumps({"type": kind, "order_id": "X"}).encode(), missing, "required"))
    return out


async def test_poison_on_every_input_topic_is_dead_lettered_and_work_goes_on(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    own: OwnPipeline,
) -> None:
    dl_since = await end_offsets(kafka_settings, DEAD_LETTER)
    ev_since = await end_offsets(kafka_settings, ORDER_EVENTS)
    sent = []
    for topic in CONSUMERS:
        for n, (value, field, words) in enumerate(poisons(topic)):
            meta = await send(kafka_settings, topic, value, f"POISON-{n}")
            sent.append((topic, meta.partition, meta.offset, field, words))
    # With a usable order_id, bad work orders are answered with a `rejected` event instead.
    shaped = {"type": "work-order/v1", "order_id": "POISON-SHAPE", "quantity": "lots"}
    await submit(kafka_settings, shaped, "POISON-SHAPE")
    await submit(kafka_settings, {"type": "bogus/v9", "order_id": "POISON-TYPE"}, "POISON-TYPE")
    order_id = "REL-AFTER-POISON"
    await submit(kafka_settings, rel_order(order_id, POISON_ORDER_QUANTITY), order_id)
    final = await wait_final(kafka_settings, order_id, ev_since, timeout=240)
    assert final.status == "completed", final
    result = await check_order(
        stack, store, kafka_settings, order_id, POISON_ORDER_QUANTITY, verify_cli=False
    )
    assert result.lost == 0 and result.duplicates == 0

    letters = {
        (d["topic"], d["partition"], d["offset"], d["service"]): d
        for d in await dead_letters(kafka_settings, dl_since)
    }
    for topic, partition, offset, field, words in sent:
        # Every consumer of the topic dead-letters it (station results: the assembler, and the
        # signer's device-key consumer, which enters bound device-key DACs in the ledger).
        for service in (*ALSO_CONSUMED_BY.get(topic, ()), CONSUMERS[topic][0]):
            letter = letters.get((topic, partition, offset, service))
            assert letter is not None, f"{service}: no dead letter for {topic}/{partition}/{offset}"
            assert letter["reason"] == "invalid_input"
            assert letter["key"].startswith("POISON-")
            assert any(e["field"] == field and words in e["message"] for e in letter["errors"]), (
                topic,
                letter["errors"],
            )
    rejected = {}
    for oid in ("POISON-SHAPE", "POISON-TYPE"):
        (ev,) = [e for e in await order_events(kafka_settings, oid, ev_since)]
        assert ev.status == "rejected"
        rejected[oid] = {e.field: e.message for e in ev.errors}
    assert rejected["POISON-SHAPE"]["quantity"] == "must be an integer"
    assert "product" in rejected["POISON-SHAPE"]
    assert rejected["POISON-TYPE"]["type"].startswith("unknown message type 'bogus/v9'")
    assert not await store.exists("orders/POISON-SHAPE/order.json")
    print(f"\npoison: {len(sent)} dead-lettered on {len(CONSUMERS)} topics, 2 rejected")
