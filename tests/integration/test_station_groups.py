"""A line's consumer group on the real broker: a static member that died without leaving, the
message a consumer that cannot join gives, and its removal by the stations' sweeper.

The dead member is a real consumer process, SIGKILLed after it joined: nothing tells the
broker it is gone (noida-db 0.2.3 never expires it; Kafka would after session.timeout.ms).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.errors import JoinStalled
from matterfab.messages import IMAGES_READY, ImageReady
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import BatchSpec, ServiceSpec, StreamService
from matterfab.services.station import presence
from matterfab.stack import LocalStack

LEASE = presence.LEASE_S
pytestmark = pytest.mark.timeout(180)

MEMBER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
async def main():
    bootstrap, group, instance = sys.argv[1:4]
    c = AIOKafkaConsumer(sys.argv[4], bootstrap_servers=bootstrap, group_id=group,
                         group_instance_id=instance, enable_auto_commit=False)
    await c.start()
    print("joined", flush=True)
    while True:
        await c.getmany(timeout_ms=500)
asyncio.run(main())
"""


@pytest.fixture
def dead_member(stack: LocalStack, kafka_settings: KafkaSettings) -> Iterator[tuple[str, str]]:
    """(group, instance id) of a station group whose only member was SIGKILLed."""
    group = f"matterfab-station-gone-{uuid.uuid4().hex[:6]}"
    instance = "station-GONE-A"
    argv = [sys.executable, "-c", MEMBER, kafka_settings.bootstrap, group, instance, IMAGES_READY]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        yield group, instance
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _service(group: str, settings: KafkaSettings, instance: str) -> StreamService[Any]:
    async def handle(msg: Any) -> list[Any]:
        return []

    spec: ServiceSpec[Any] = BatchSpec(
        "station", IMAGES_READY, ImageReady, group, handle=handle, group_label="line gone"
    )
    return StreamService(spec, settings, instance)


async def test_a_consumer_that_cannot_join_names_the_group_and_the_departed_member(
    kafka_settings: KafkaSettings, dead_member: tuple[str, str]
) -> None:
    group, dead = dead_member
    settings = kafka_settings.model_copy(update={"connect_timeout_s": 4.0})
    service = _service(group, settings, "station-GONE-B")
    try:
        with pytest.raises(JoinStalled) as caught:
            await service._start_clients()
    finally:
        await service._stop_clients()
    text = str(caught.value)
    assert text.startswith(f"line gone (group {group}): waiting for departed member {dead} ")
    assert "unreachable" not in text.lower() and f"Kafka at {settings.bootstrap} answers" in text


async def test_the_sweeper_removes_a_departed_member_and_the_next_one_joins(
    kafka_settings: KafkaSettings, dead_member: tuple[str, str]
) -> None:
    group, dead = dead_member
    store = MemoryObjectStore()
    now = [0.0]
    sweeper = presence.Sweeper(store, kafka_settings, "gone", group, "station-GONE-C",
                               clock=lambda: now[0])  # fmt: skip
    try:
        assert await sweeper.sweep_once() == {}  # first seen now: not departed yet
        now[0] += presence.LEASE_S
        gone = await sweeper.sweep_once()
        assert list(gone) == [dead] and f"no sign of life for {LEASE:.0f}s" in gone[dead]
        async with kafka.admin(kafka_settings) as client:
            state = await kafka.describe_group(client, group)
        assert dead not in {m.instance_id for m in state.members}
    finally:
        await sweeper.close()
    # The line is free: a new static member joins at once and gets every partition.
    service = _service(group, kafka_settings, "station-GONE-C")
    started = time.monotonic()
    try:
        await service._start_clients()
        assert service.consumer is not None
        assert len(service.consumer.assignment()) > 0
        joined_s = time.monotonic() - started
        # A clean stop leaves the group by instance id: the group is empty afterwards.
        assert await kafka.leave_group(service.consumer, group)
    finally:
        await service._stop_clients()
    assert joined_s < 10
    async with kafka.admin(kafka_settings) as client:
        for _ in range(20):
            if not (await kafka.describe_group(client, group)).members:
                break
            await asyncio.sleep(0.25)
        assert (await kafka.describe_group(client, group)).members == ()
