"""`matterfab lag` and the monitor against the real broker: groups, offsets, order events."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import aiohttp
from aiohttp import web
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import ORDER_EVENTS, OrderEvent, encode
from matterfab.services.monitor.app import Monitor
from matterfab.services.monitor.lag import LagReader
from matterfab.stack import LocalStack
from matterfab.topics import TopicSpec, apply_topics
from tests.pipeline import matterfab


async def group_with_lag(settings: KafkaSettings) -> tuple[str, str]:
    """A fresh 3-partition topic holding 2/5/1 records and a group that committed 3 on p1."""
    topic = f"test.lag.{uuid.uuid4().hex[:10]}"
    await apply_topics(settings, [TopicSpec(topic, 3, 3_600_000)])
    group = f"test-lag-{uuid.uuid4().hex[:8]}"
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for partition, count in ((0, 2), (1, 5), (2, 1)):
            for _ in range(count):
                await producer.send_and_wait(topic, b"x", partition=partition)
    finally:
        await producer.stop()
    reader = kafka.consumer(settings, topic, group_id=group)
    await reader.start()
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 8 and time.monotonic() < deadline:
            batches = await reader.getmany(timeout_ms=500)
            seen += sum(len(b) for b in batches.values())
        await reader.commit({TopicPartition(topic, 1): 3})
    finally:
        await reader.stop()
    return topic, group


EXPECTED = [(0, None, 2, 2), (1, 3, 5, 2), (2, None, 1, 1)]


async def test_lag_cli_json_and_table(stack: LocalStack, kafka_settings: KafkaSettings) -> None:
    topic, group = await group_with_lag(kafka_settings)

    done = await asyncio.to_thread(matterfab, stack, "lag", "--group", group, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [g["group"] for g in doc["groups"]] == [group]
    assert doc["groups"][0]["lag"] == 5
    rows = [
        (p["partition"], p["committed"], p["end"], p["lag"]) for p in doc["groups"][0]["partitions"]
    ]
    assert rows == EXPECTED
    assert {p["topic"] for p in doc["groups"][0]["partitions"]} == {topic}

    everything = await asyncio.to_thread(matterfab, stack, "lag", "--json")
    assert everything.returncode == 0, everything.stderr
    assert group in [g["group"] for g in json.loads(everything.stdout)["groups"]]

    table = await asyncio.to_thread(matterfab, stack, "lag", "--group", group)
    assert table.returncode == 0, table.stderr
    assert f"{group} · {topic} · lag 5" in table.stdout
    assert "committed" in table.stdout and "partition" in table.stdout


async def test_lag_cli_fails_cleanly_without_broker(stack: LocalStack) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    done = await asyncio.to_thread(
        matterfab,
        stack,
        "lag",
        timeout=120,
        MATTERFAB_KAFKA_BOOTSTRAP=dead,
        MATTERFAB_KAFKA_REQUEST_TIMEOUT_MS="2000",
    )
    assert done.returncode == 1
    assert "error" in done.stderr and "Traceback" not in done.stderr


async def test_lag_reader_keeps_clients_across_reads(kafka_settings: KafkaSettings) -> None:
    topic, group = await group_with_lag(kafka_settings)
    reader = LagReader(kafka_settings)
    try:
        groups = await reader.read()
        mine = [g for g in groups if g.group == group]
        assert len(mine) == 1
        assert [(p.partition, p.committed, p.end, p.lag) for p in mine[0].partitions] == EXPECTED
        assert mine[0].total == 5
        assert {p.topic for p in mine[0].partitions} == {topic}
        only = await reader.read(only=group)
        assert [g.group for g in only] == [group]
        assert only[0].partitions == mine[0].partitions
    finally:
        await reader.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_monitor_follows_order_events_and_lag(kafka_settings: KafkaSettings) -> None:
    _, group = await group_with_lag(kafka_settings)
    order_id = f"IT-MON-{uuid.uuid4().hex[:8]}"
    monitor = Monitor(kafka_settings, refresh_s=0.5)
    runner = web.AppRunner(monitor.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await monitor.start()
    producer = kafka.producer(kafka_settings)
    await producer.start()
    try:
        for status, ready in (("accepted", 0), ("progress", 2), ("progress", 3)):
            msg = OrderEvent(order_id=order_id, status=status, ready=ready, quantity=4)  # type: ignore[arg-type]
            await producer.send_and_wait(ORDER_EVENTS, encode(msg), key=order_id.encode())
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            status_doc: dict = {}
            while time.monotonic() < deadline:
                async with http.get(f"{base}/api/status") as res:
                    assert res.status == 200
                    status_doc = await res.json()
                orders = {o["order_id"]: o for o in status_doc["orders"]}
                groups = {g["group"]: g for g in status_doc["groups"]}
                if orders.get(order_id, {}).get("ready") == 3 and group in groups:
                    break
                await asyncio.sleep(0.3)
            order = {o["order_id"]: o for o in status_doc["orders"]}[order_id]
            assert (order["status"], order["ready"], order["quantity"], order["percent"]) == (
                "progress",
                3,
                4,
                75,
            )
            assert {g["group"]: g["lag"] for g in status_doc["groups"]}[group] == 5

            async with http.get(f"{base}/metrics") as res:
                assert res.status == 200
                text = await res.text()
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            assert samples[("matterfab_order_ready", (("order_id", order_id),))] == 3
            assert samples[("matterfab_group_lag", (("group", group),))] == 5

            async with http.get(f"{base}/") as res:
                assert res.status == 200
                assert res.headers["Content-Type"].startswith("text/html")
                assert "/api/status" in await res.text()
    finally:
        await producer.stop()
        await monitor.stop()
        await runner.cleanup()
