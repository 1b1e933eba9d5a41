"""The failure policy: one table from exception type to action (retry, dead-letter, stop), and
what a permanent fault does to a running service: no retry loop, the records stay uncommitted,
and /healthz answers 503 naming the fault (StreamService.run on the fake broker of
test_runtime_window; no stack)."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from botocore.exceptions import ClientError, EndpointConnectionError
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from matterfab import health, kafka
from matterfab.config import KafkaSettings
from matterfab.errors import (
    IntegrityError,
    JoinStalled,
    Missing,
    Refused,
    StackError,
    Unreachable,
    invalid,
)
from matterfab.failures import POLICY, Action, FailurePolicy, PermanentFault, Rule
from matterfab.messages import DEAD_LETTER, WorkOrder
from matterfab.runtime import BatchSpec, Emit, Publisher, ServiceSpec, StreamService
from matterfab.s3 import AccessDenied, BucketMissing
from tests.unit.test_runtime_window import TOPIC, FakeBroker, FakePublisher, Harness, Note, key


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


TABLE: list[tuple[BaseException, Action, str]] = [
    # bad input and integrity alarms: set aside, go on
    (invalid("serial", "must be 8 digits"), Action.DEAD_LETTER, "invalid_input"),
    (IntegrityError("devices/x/dac.der exists with other bytes"), Action.DEAD_LETTER, "integrity"),
    # permanent: a deployment to fix
    (AccessDenied("S3 store refused the credentials"), Action.STOP, "permanent"),
    (BucketMissing("bucket 'b' does not exist"), Action.STOP, "permanent"),
    (Refused("TLS certificate not trusted"), Action.STOP, "permanent"),
    (Missing("topic mfg.x does not exist"), Action.STOP, "permanent"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), Action.STOP, "permanent"),
    (PermissionError(errno.EPERM, "Operation not permitted"), Action.STOP, "permanent"),
    (TopicAuthorizationFailedError(), Action.STOP, "permanent"),
    (SaslAuthenticationFailed(), Action.STOP, "permanent"),
    (PermissionDeniedError("403"), Action.STOP, "permanent"),
    (UnauthenticatedError("401"), Action.STOP, "permanent"),
    (PermanentFault("handling", BucketMissing("no bucket")), Action.STOP, "permanent"),
    # transient: wait and try again
    (Unreachable("Kafka at x is unreachable"), Action.WAIT, "transient"),
    (JoinStalled("group g waits for a departed member"), Action.RETRY, "transient"),
    (StackError("the store is away past its retry deadline"), Action.RETRY, "transient"),
    (ConnectionRefusedError(), Action.RETRY, "transient"),
    (TimeoutError(), Action.RETRY, "transient"),
    (OSError(errno.EIO, "I/O error"), Action.RETRY, "transient"),
    (KafkaConnectionError(), Action.RETRY, "transient"),
    (aiohttp.ServerDisconnectedError(), Action.RETRY, "transient"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Action.RETRY, "transient"),
    (_client_error(503, "SlowDown"), Action.RETRY, "transient"),
    (GenericError("Error performing GET: connection refused"), Action.RETRY, "transient"),
    # anything else: a few tries, then a dead letter
    (ZeroDivisionError("a bug"), Action.RETRY_THEN_DEAD_LETTER, "internal"),
    (ValueError("Connect"), Action.RETRY_THEN_DEAD_LETTER, "internal"),
    (_client_error(400, "InvalidArgument"), Action.RETRY_THEN_DEAD_LETTER, "internal"),
]


@pytest.mark.parametrize(("exc", "action", "reason"), TABLE, ids=lambda v: type(v).__name__)
def test_each_kind_of_failure_has_its_action(
    exc: BaseException, action: Action, reason: str
) -> None:
    rule = POLICY.rule_for(exc)
    assert (rule.action, rule.reason) == (action, reason)
    assert POLICY.transient(exc) == (action in (Action.RETRY, Action.WAIT))


def test_a_policy_is_a_table_first_match_wins() -> None:
    """A service may put its own rule first (here: a ValueError is bad input to it)."""
    own = FailurePolicy(rules=(Rule((ValueError,), Action.DEAD_LETTER, "bad"), *POLICY.rules))
    assert own.rule_for(ValueError("x")).reason == "bad"
    assert own.action(invalid("x", "y")) is Action.DEAD_LETTER  # InvalidInput is a ValueError
    assert own.action(BucketMissing("b")) is Action.STOP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
            return answer.status, await answer.json()


async def test_a_permanent_fault_in_a_window_parks_the_service_and_healthz_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket goes missing under a record: one attempt, no dead letter (the work is not
    bad), nothing committed past it, no retry loop, 503 naming the bucket; a stop ends it."""
    failing = key(TopicPartition(TOPIC, 0), 2)
    attempts: list[str] = []

    async def handler(tp: TopicPartition, offset: int) -> None:
        attempts.append(key(tp, offset))
        if key(tp, offset) == failing:
            raise BucketMissing("bucket 'factory' does not exist on the S3 store at http://s3")

    h = Harness(monkeypatch, {0: 5}, window=1, handler=handler)
    h.service.health.started = True
    port = _free_port()
    server = await health.serve(h.service.health, port)
    try:
        h.start()
        await h.until(lambda: "windowed" in h.service.health.down)
        status, body = await _healthz(port)
        assert status == 503 and body["ready"] is False
        assert "'factory' does not exist" in body["down"]["windowed"]
        calls = len(attempts)
        await asyncio.sleep(1.0)  # parked: not one more attempt
        assert len(attempts) == calls and attempts.count(failing) == 1
        assert h.task is not None and not h.task.done()
        assert h.broker.committed.get(TopicPartition(TOPIC, 0), 0) <= 2
        assert not [e for e in h.publisher.sent if e.topic == DEAD_LETTER]
        assert h.consumer.stopped  # the clients are let go while parked
        began = time.monotonic()
        await h.stop()
        assert time.monotonic() - began < 2
    finally:
        assert server is not None
        await server.cleanup()


async def test_a_permanent_fault_in_a_batch_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EACCES on a local file while handling a batch: the same, in batch mode."""
    publisher = FakePublisher()
    broker = FakeBroker(publisher, {0: 3, 1: 3})
    attempts: list[bytes] = []

    async def handle(raw: bytes) -> list[Emit]:
        attempts.append(raw)
        if raw == b"1/1":
            raise PermissionError(errno.EACCES, "Permission denied", "/var/lib/matterfab/out")
        await asyncio.sleep(0.01)
        return [Emit("batch.out", raw.decode(), Note(record=raw.decode()))]

    spec: ServiceSpec[bytes] = BatchSpec(
        "batched", TOPIC, WorkOrder, "g", handle=handle, decode=lambda raw: raw
    )
    deps = [health.Dependency("kafka", "Kafka at nowhere", _answers)]
    service = StreamService(
        spec,
        KafkaSettings(bootstrap="127.0.0.1:1"),
        dependencies=deps,
        publisher=publisher,  # type: ignore[arg-type]
    )

    async def start(client: Any, settings: KafkaSettings, what: str = "") -> None:
        pass

    monkeypatch.setattr(kafka, "consumer", broker.consumer)
    monkeypatch.setattr(kafka, "start", start)
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + 5
    while "batched" not in service.health.down:
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    assert "Permission denied" in service.health.down["batched"]
    assert not service.health.ready
    await asyncio.sleep(0.8)
    assert attempts.count(b"1/1") == 1
    assert broker.committed == {}  # the batch that met the fault is not committed
    assert not [e for e in publisher.sent if e.topic == DEAD_LETTER]
    service.stop()
    await asyncio.wait_for(task, 3)


async def _answers() -> None:
    return None


class _RefusingProducer:
    """A producer the broker refuses (ACLs): every send fails the same way."""

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, topic: str, value: bytes, key: bytes) -> Any:
        self.sends += 1
        raise TopicAuthorizationFailedError()


async def test_a_send_the_broker_refuses_is_a_permanent_fault_not_a_retry_loop() -> None:
    publisher = Publisher("t", KafkaSettings(bootstrap="127.0.0.1:1"))
    producer = _RefusingProducer()
    publisher.producer = producer  # type: ignore[assignment]
    with pytest.raises(PermanentFault, match="sending stopped"):
        await asyncio.wait_for(publisher.send([Emit("out", "k", Note(record="r"))]), 2)
    assert producer.sends == 1
