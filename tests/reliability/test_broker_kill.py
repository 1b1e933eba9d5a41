"""The broker dies hard (SIGKILL, no snapshot) during allocation, signing and assembly.

The embedded broker restores its last periodic snapshot: the records, topics and committed
offsets of the last moments are gone (docs/embedded-broker.md "Hard death"). Nobody resubmits
anything: the allocator notices the log is behind what it sent, or the order's ready count staying
flat (records lost downstream), and re-drives the order (or its missing devices) from the
bucket.
Each case checks the order completes with exactly its devices, the identities of its stored
allocation, the DACs issued before the kill, and every invariant of `check_order`; it prints
what the broker lost (records per topic and committed offsets per group, lower bounds: the
services write again as soon as it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.errors import StackError
from matterfab.lots import DACS, lot_key
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.reliability.harness import (
    LOT_ENV,
    BrokerState,
    OwnPipeline,
    broker_state,
    check_order,
    count_dacs,
    end_offsets,
    ensure_profile,
    exclusive_pipeline,
    issued_dacs,
    manifest_rows,
    rel_order,
    sigkill_broker,
    submit,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(420)]

QUANTITY = 300
INSTANCE = 74
COMPLETE_S = 240
# The allocator's stall watch re-sends the lots of an order whose ready count stays flat
# (records lost downstream of mfg.devices.allocated): 10 s instead of the default 30 s.
ALLOCATOR_ENV = {"allocator": {"MATTERFAB_ALLOCATOR_STALL_S": "10", **LOT_ENV}}
# What the allocator logs for each re-drive (services/allocator/redrive.py and stall.py).
REDRIVE_LOG = "re-driving order"
STALL_LOG = "re-drove stalled order"


@pytest.fixture(scope="module")
def own(stack: LocalStack) -> Iterator[OwnPipeline]:
    """Our pipeline, alone on the stack's consumer groups; the stack healthy again after."""
    ensure_profile(stack)
    try:
        with exclusive_pipeline(stack, INSTANCE, per_service_env=ALLOCATOR_ENV) as services:
            yield services
    finally:
        if not stack.is_running():
            stack.start()


async def kill_broker_when(
    stack: LocalStack,
    store: ObjectStore,
    settings: KafkaSettings,
    own: OwnPipeline,
    order_id: str,
    moment: Callable[[], Awaitable[bool]],
    what: str,
) -> dict[str, Any]:
    """Submit an order, SIGKILL the broker at `moment`, restart it, and check the order."""
    pids = stack.running_services()
    samples: list[tuple[float, BrokerState]] = []
    stop = asyncio.Event()

    async def sample() -> None:  # the broker's state as close to the kill as we can see it
        while not stop.is_set():
            state = await broker_state(settings)
            samples.append((time.monotonic(), state))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())

    async def sampled() -> bool:
        return bool(samples)

    # A first sample before the order: with lots a whole order is signed in well under a
    # second, sooner than one sample takes, and the kill must have a state to compare with.
    await wait_until(sampled, 30, "a first sample of the broker's state")
    await submit(settings, rel_order(order_id, QUANTITY), order_id)
    await wait_until(moment, 120, what, interval=0.02)
    snapshot = stack.home / "data" / "kafka" / "kafka.json"
    snapshot_age = round(time.time() - snapshot.stat().st_mtime, 1) if snapshot.exists() else None
    sigkill_broker(stack)
    killed = time.monotonic()
    try:
        stop.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError, StackError):
            await sampler
        sampled_at, before = samples[-1]
        issued = await issued_dacs(store, order_id)
    finally:  # back up whatever failed: the module's next tests need the broker
        await asyncio.to_thread(stack.start)  # as `make up` does: start, recreate missing topics
    after = await broker_state(settings)
    await wait_until(
        lambda: store.exists(f"orders/{order_id}/manifest.json"),
        COMPLETE_S,
        f"{order_id} completed without resubmission",
        interval=1.0,
    )
    recovered_s = round(time.monotonic() - killed, 1)
    result = await check_order(stack, store, settings, order_id, QUANTITY)
    assert result.lost == 0 and result.duplicates == 0
    # The identities are the stored allocation's, the DACs issued before the kill are kept.
    allocated = json.loads(await store.get(f"orders/{order_id}/allocation/00000.json"))
    rows = await manifest_rows(store, order_id)
    assert [r["serial_num"] for r in rows] == [d["serial_num"] for d in allocated]
    assert [int(r["passcode"]) for r in rows] == [d["passcode"] for d in allocated]
    now = await issued_dacs(store, order_id)
    assert {i: now[i] for i in issued} == issued
    # Every service rode the broker's death out: none crashed.
    assert stack.running_services() == pids
    report = {
        "order": order_id,
        "killed": what,
        "dacs_at_kill": len(issued),
        "snapshot_age_at_kill_s": snapshot_age,
        "state_sampled_s_before_kill": round(killed - sampled_at, 2),
        "broker_lost": after.lost_since(before),
        "completed_after_s": recovered_s,
        "redelivered": result.redelivered,
        "redrives_logged": own.log(f"allocator-{INSTANCE}").count(REDRIVE_LOG),
        "stall_redrives_logged": own.log(f"allocator-{INSTANCE}").count(STALL_LOG),
    }
    print(f"\nbroker SIGKILL: {json.dumps(report)}")
    return report


async def test_broker_killed_during_allocation(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, own: OwnPipeline
) -> None:
    order_id = "REL-KILL-ALLOC"
    await kill_broker_when(
        stack,
        store,
        kafka_settings,
        own,
        order_id,
        lambda: store.exists(f"orders/{order_id}/claim.json"),
        "allocation (claim stored)",
    )


async def test_broker_killed_during_signing(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, own: OwnPipeline
) -> None:
    order_id = "REL-KILL-SIGN"

    await kill_broker_when(
        stack,
        store,
        kafka_settings,
        own,
        order_id,
        lambda: store.exists(lot_key(order_id, 0, DACS)),
        "signing (lot 0's DACs issued)",
    )


async def test_broker_killed_during_assembly(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, own: OwnPipeline
) -> None:
    order_id = "REL-KILL-ASSEMBLE"

    async def assembling() -> bool:
        return bool(await store.list_keys(f"orders/{order_id}/ready/"))

    await kill_broker_when(
        stack,
        store,
        kafka_settings,
        own,
        order_id,
        assembling,
        "assembly (first ready chunk stored)",
    )


async def test_records_lost_downstream_while_the_group_offset_survives(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, own: OwnPipeline
) -> None:
    """The restored snapshot kept the builder's committed offset, not the records before it.

    Made deterministic without a kill: the builder is stopped while the signer attests the
    order, then its group's offset is committed at the end of mfg.devices.attested, so it
    never sees those records (mfg.devices.allocated is whole: the log watch sees nothing).
    Only the stall watch can finish the order: it re-sends the devices in no ready chunk.
    """
    order_id = "REL-LOST-DOWNSTREAM"
    quantity = 40
    topic = "mfg.devices.attested"
    allocator_log = f"allocator-{INSTANCE}"
    stalls_before = own.log(allocator_log).count(STALL_LOG)
    own.stop(f"builder-{INSTANCE}")
    await submit(kafka_settings, rel_order(order_id, quantity), order_id)
    await wait_until(
        lambda: _at_least(count_dacs(store, order_id), quantity),
        120,
        f"{order_id}: every DAC issued",
        interval=0.5,
    )
    issued = await issued_dacs(store, order_id)
    await asyncio.sleep(1.0)  # the signer's last sends acknowledged
    ends = await end_offsets(kafka_settings, topic)
    skipper = kafka.consumer(kafka_settings, group_id="matterfab-builder")
    await skipper.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(ends)]
        skipper.assign(parts)
        await skipper.commit({tp: ends[tp.partition] for tp in parts})
    finally:
        await skipper.stop()
    started = time.monotonic()
    own.start("builder", INSTANCE)
    await wait_until(
        lambda: store.exists(f"orders/{order_id}/manifest.json"),
        COMPLETE_S,
        f"{order_id} completed after its attested records were skipped",
        interval=1.0,
    )
    result = await check_order(stack, store, kafka_settings, order_id, quantity)
    assert result.lost == 0 and result.duplicates == 0
    now = await issued_dacs(store, order_id)
    assert now == issued  # the re-sent devices adopted their stored DACs
    stalls = own.log(allocator_log).count(STALL_LOG) - stalls_before
    assert stalls >= 1
    print(
        "\nlost downstream: "
        + json.dumps(
            {
                "order": order_id,
                "completed_after_s": round(time.monotonic() - started, 1),
                "stall_redrives_logged": stalls,
            }
        )
    )


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n
