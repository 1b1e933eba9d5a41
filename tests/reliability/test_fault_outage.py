"""The broker restarts and the S3 store is down for 15 s during an order: nothing lost or doubled.

While the store is down a sampler checks, again and again, that the builder never commits an
offset for a lot whose objects are not yet in the bucket: its `labels.lot` and its
`images.lot` (every device's `partition.bin`; offsets are read first, the bucket listed
after: anything of a committed lot missing from the later listing is a violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.lots import IMAGES, LABELS, lot_key
from matterfab.messages import DEVICES_ALLOCATED, DEVICES_ATTESTED, IMAGES_READY, ORDER_EVENTS
from matterfab.s3 import ObjectStore
from matterfab.stack import KAFKA, S3, LocalStack
from tests.reliability.harness import (
    LOT_ENV,
    OwnPipeline,
    check_order,
    count_dacs,
    count_objects,
    end_offsets,
    ensure_profile,
    exclusive_pipeline,
    of_order,
    read_topic,
    record_devices,
    rel_order,
    submit,
    wait_final,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(420)]

QUANTITY = 300
INSTANCE = 72
S3_DOWN_S = 15.0
DEVICE_TOPICS = (DEVICES_ALLOCATED, DEVICES_ATTESTED, IMAGES_READY)


@pytest.fixture(scope="module")
def own(stack: LocalStack) -> Iterator[OwnPipeline]:
    """Our pipeline, alone on the stack's consumer groups; the stack healthy again after."""
    ensure_profile(stack)
    try:
        with exclusive_pipeline(
            stack, INSTANCE, per_service_env={"allocator": LOT_ENV}
        ) as services:
            yield services
    finally:
        if not stack.is_running():
            stack.start()


def stop_infra(stack: LocalStack, name: str) -> float:
    """A real, clean stop of the broker or the store (SIGTERM by PID); seconds it took."""
    pid = stack._live_pid(name)
    assert pid is not None, f"{name} is not running"
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = started + 60
    while stack._live_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack._live_pid(name) is None, f"{name} ignored SIGTERM for 60 s"
    return time.monotonic() - started


class CommitSampler:
    """Checks "committed => durable" for the builder while it runs; counts its samples."""

    def __init__(self, settings: KafkaSettings, store: ObjectStore, order_id: str, since: Any):
        self.settings, self.store, self.order_id, self.since = settings, store, order_id, since
        self.samples = 0
        self.committed_devices = 0
        self.violations: list[str] = []

    async def sample(self) -> None:
        """One sample: committed offsets first, then the bucket."""
        offsets = await kafka.committed_offsets(self.settings, "matterfab-builder")
        done = {tp.partition: o for tp, o in offsets.items() if tp.topic == DEVICES_ATTESTED}
        records = await read_topic(self.settings, DEVICES_ATTESTED, self.since)
        committed = [
            r for r in records if r.offset < done.get(r.partition, 0) and of_order(r, self.order_id)
        ]
        keys = set(await self.store.list_keys(f"orders/{self.order_id}/"))
        devices = set()
        for r in committed:  # a lot, keyed by its first device's id
            first = int(r.key.decode().split("/")[1])
            if lot_key(self.order_id, first, LABELS) not in keys:
                self.violations.append(r.key.decode() + " (labels.lot)")
            if lot_key(self.order_id, first, IMAGES) not in keys:  # its devices' partitions
                self.violations.append(r.key.decode() + " (images.lot)")
            for device_id in record_devices(r):
                devices.add(device_id)
        self.samples += 1
        self.committed_devices = len(devices)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every half second until `stop`; a sample failing (store down) is skipped."""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sample(), 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def test_broker_restart_and_s3_outage_mid_order(
    stack: LocalStack, store: ObjectStore, kafka_settings: KafkaSettings, own: OwnPipeline
) -> None:
    order_id = "REL-OUTAGE"
    since = {t: await end_offsets(kafka_settings, t) for t in (*DEVICE_TOPICS, ORDER_EVENTS)}
    pids = stack.running_services()
    started = time.monotonic()
    report: dict[str, Any] = {}
    sampler = CommitSampler(kafka_settings, store, order_id, since[DEVICES_ATTESTED])
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop_sampling))
    try:
        await submit(kafka_settings, rel_order(order_id, QUANTITY), order_id)
        await wait_until(
            lambda: _at_least(count_dacs(store, order_id), 40),
            120,
            "40 DACs issued",
        )
        # 1. The broker: clean stop (it snapshots on SIGTERM), start again.
        report["broker_stop_s"] = round(await asyncio.to_thread(stop_infra, stack, KAFKA), 1)
        down = time.monotonic()
        await asyncio.to_thread(stack.start)
        report["broker_down_s"] = round(time.monotonic() - down, 1)
        report["ready_after_broker"] = await count_objects(store, order_id, "partition.bin")
        await wait_until(
            lambda: _at_least(count_objects(store, order_id, "partition.bin"), 60),
            150,
            "60 images after the broker restart",
        )
        # 2. The store: down for 15 s in the middle of the build.
        report["ready_before_s3_stop"] = await count_objects(store, order_id, "partition.bin")
        await asyncio.to_thread(stop_infra, stack, S3)
        down = time.monotonic()
        await asyncio.sleep(S3_DOWN_S)
        assert stack._live_pid(S3) is None
        await asyncio.to_thread(stack.start)
        report["s3_down_s"] = round(time.monotonic() - down, 1)
        assert stack.is_running()

        final = await wait_final(kafka_settings, order_id, since[ORDER_EVENTS], timeout=240)
        assert final.status == "completed", final
    finally:
        stop_sampling.set()
        await sampling
        if not stack.is_running():
            await asyncio.to_thread(stack.start)
    result = await check_order(
        stack,
        store,
        kafka_settings,
        order_id,
        QUANTITY,
        since={t: since[t] for t in DEVICE_TOPICS},
    )
    assert result.lost == 0 and result.duplicates == 0
    report.update(
        check=result.__dict__,
        commit_samples=sampler.samples,
        total_s=round(time.monotonic() - started),
    )
    print(f"\noutages: {json.dumps(report)}")
    assert sampler.violations == [], f"committed before durable: {sampler.violations[:5]}"
    assert sampler.samples >= 5, "the commit sampler hardly ran"
    # Every service is still the process we started: they rode the outages out, none crashed.
    assert stack.running_services() == pids


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)
