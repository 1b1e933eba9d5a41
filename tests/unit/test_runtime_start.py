"""A stream service never exits because Kafka is slow or away while it starts; it stops on
request at any point (tests drive StreamService.run with fake clients, no broker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from matterfab import health
from matterfab.config import KafkaSettings
from matterfab.errors import Unreachable
from matterfab.messages import WORK_ORDERS, WorkOrder
from matterfab.runtime import BatchSpec, Publisher, ServiceSpec, StreamService


async def _answers() -> None:
    return None


def _service() -> StreamService[Any]:
    async def handle(msg: Any) -> list[Any]:
        return []

    spec: ServiceSpec[Any] = BatchSpec("t", WORK_ORDERS, WorkOrder, "g", handle=handle)
    deps = [health.Dependency("kafka", "Kafka at nowhere", _answers)]
    return StreamService(spec, KafkaSettings(bootstrap="127.0.0.1:1"), dependencies=deps)


async def test_a_broker_too_slow_to_start_the_clients_means_waiting_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = 0

    async def slow_start(self: Publisher) -> None:
        nonlocal starts
        starts += 1
        raise Unreachable("Kafka at nowhere is unreachable (producer): no answer in time")

    monkeypatch.setattr(Publisher, "start", slow_start)
    service = _service()
    task = asyncio.create_task(service.run())
    while starts < 2:  # it failed to start, and tried again instead of exiting
        assert not task.done(), task.exception()
        await asyncio.sleep(0.05)
    began = time.monotonic()
    service.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 3


async def test_a_stop_while_the_clients_start_ends_the_service_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered = asyncio.Event()

    async def hanging_start(self: Publisher) -> None:
        entered.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(Publisher, "start", hanging_start)
    service = _service()
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(entered.wait(), 5)
    began = time.monotonic()
    service.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 1
