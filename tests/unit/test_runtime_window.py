"""The runtime's sliding window (ServiceSpec.window), driven through StreamService.run against
a fake consumer and publisher: records keep flowing past a slow one, commits never pass a
record whose emits are not acknowledged, a stop waits for what is in flight, a rebalance hands
over what is done and drops what was fetched before it, and a broken consumer is replaced
with the records in flight cancelled. Against the real broker:
tests/integration/test_runtime_window_kafka.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel

from matterfab import health, kafka, runtime
from matterfab.config import KafkaSettings
from matterfab.errors import invalid
from matterfab.messages import DEAD_LETTER, WORK_ORDERS, WorkOrder
from matterfab.runtime import BatchSpec, Emit, ServiceSpec, StreamService, WindowSpec

TOPIC = "window.in"


class Note(BaseModel):
    """What the test handler emits for a record: which one it was."""

    record: str


def key(tp: TopicPartition, offset: int) -> str:
    return f"{tp.partition}/{offset}"


class FakePublisher:
    """Acknowledges at once; remembers what was sent (by key), in order."""

    def __init__(self) -> None:
        self.sent: list[Emit] = []
        self.fail_on: str | None = None
        self.producer = object()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, emits: Sequence[Emit]) -> None:
        await asyncio.sleep(0)
        for e in emits:
            if e.key == self.fail_on:
                raise RuntimeError(f"cannot send {e.key}")
        self.sent.extend(emits)

    def keys(self) -> set[str]:
        return {e.key for e in self.sent}


class FakeBroker:
    """One topic's log and a group's committed offsets; checks every commit as it comes."""

    def __init__(self, publisher: FakePublisher, sizes: dict[int, int]):
        self.publisher = publisher
        self.available = {TopicPartition(TOPIC, p): n for p, n in sizes.items()}
        self.log = {
            TopicPartition(TOPIC, p): [
                ConsumerRecord(
                    TOPIC, p, o, 0, 0, None, key(TopicPartition(TOPIC, p), o).encode(), 0, 0, 0, []
                )
                for o in range(n)
            ]
            for p, n in sizes.items()
        }
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.consumers: list[FakeConsumer] = []
        self.violations: list[str] = []

    def consumer(self, settings: KafkaSettings, *topics: str, **kw: Any) -> FakeConsumer:
        made = FakeConsumer(self, kw["max_poll_records"])
        self.consumers.append(made)
        return made

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        sent = self.publisher.keys()
        for tp, offset in offsets.items():
            missing = [o for o in range(offset) if key(tp, o) not in sent]
            if missing:
                self.violations.append(f"commit {tp.partition}:{offset} before {missing} done")
            if offset < self.committed.get(tp, 0):
                self.violations.append(f"commit {tp.partition}:{offset} moved back")
        self.committed.update(offsets)
        self.commits.append(dict(offsets))

    def ends(self) -> dict[TopicPartition, int]:
        return {tp: len(records) for tp, records in self.log.items()}

    def hold_back(self, tp: TopicPartition, visible: int) -> None:
        """Only the first `visible` records of `tp` are in the log for now."""
        self.available[tp] = visible

    def produce(self, tp: TopicPartition) -> None:
        """The rest of `tp`'s records arrive."""
        self.available[tp] = len(self.log[tp])


class FakeConsumer:
    """getmany / commit / assignment as AIOKafkaConsumer's, from the broker's log."""

    def __init__(self, broker: FakeBroker, max_poll_records: int):
        self.broker = broker
        self.max_poll_records = max_poll_records
        self.assigned = set(broker.log)
        self.position = {tp: broker.committed.get(tp, 0) for tp in broker.log}
        self.listener: ConsumerRebalanceListener | None = None
        self.fetches = 0
        self.on_fetch: Callable[[int], None] | None = None  # told after each drain
        self.broken: Exception | None = None
        self.stopped = False
        self.quiet_until = 0.0  # after a rebalance: the first fetch from the broker takes time

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        assert topics == [TOPIC]
        self.listener = listener

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self.broken:
                raise self.broken
            out = self._drain(max_records)
            if out:
                self.fetches += 1
                if self.on_fetch:
                    self.on_fetch(self.fetches)
                return out
            if time.monotonic() >= deadline:
                return {}
            await asyncio.sleep(0.002)  # the long poll, as a poll

    def _drain(self, most: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        if time.monotonic() < self.quiet_until:
            return out
        for tp in sorted(self.assigned):
            while len(out.get(tp, [])) < most and self.position[tp] < self.broker.available[tp]:
                out.setdefault(tp, []).append(self.broker.log[tp][self.position[tp]])
                self.position[tp] += 1
            most -= len(out.get(tp, []))
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        assert set(offsets) <= self.assigned, "commit of a partition not assigned"
        self.broker.commit(offsets)

    async def rebalance(self, keep: set[TopicPartition], quiet_s: float = 0.0) -> None:
        """As aiokafka: revoke everything, then assign `keep` from the committed offsets."""
        assert self.listener is not None
        await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = set(keep)
        self.position = {tp: self.broker.committed.get(tp, 0) for tp in self.broker.log}
        self.quiet_until = time.monotonic() + quiet_s
        await self.listener.on_partitions_assigned(set(keep))

    async def stop(self) -> None:
        self.stopped = True


async def _answers() -> None:
    return None


Handler = Callable[[TopicPartition, int], Awaitable[None]]


class Harness:
    """A windowed StreamService on a fake broker; `handler` decides what each record does."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        sizes: dict[int, int],
        window: int,
        handler: Handler,
    ):
        self.publisher = FakePublisher()
        self.broker = FakeBroker(self.publisher, sizes)
        self.running = 0
        self.most_running = 0
        self.handled: list[str] = []
        self.cancelled: list[str] = []

        async def handle(raw: bytes) -> list[Emit]:
            partition, offset = (int(x) for x in raw.decode().split("/"))
            tp = TopicPartition(TOPIC, partition)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await handler(tp, offset)
            except asyncio.CancelledError:
                self.cancelled.append(key(tp, offset))
                raise
            finally:
                self.running -= 1
            self.handled.append(key(tp, offset))
            return [Emit("window.out", key(tp, offset), Note(record=key(tp, offset)))]

        spec: ServiceSpec[bytes] = WindowSpec(
            "windowed",
            TOPIC,
            WorkOrder,  # not decoded: `decode` hands the handler the raw bytes
            "g",
            handle=handle,
            decode=lambda raw: raw,
            window=window,
        )
        deps = [health.Dependency("kafka", "Kafka at nowhere", _answers)]
        self.service = StreamService(
            spec,
            KafkaSettings(bootstrap="127.0.0.1:1"),
            dependencies=deps,
            publisher=self.publisher,  # type: ignore[arg-type]
        )

        async def start(client: Any, settings: KafkaSettings, what: str = "") -> None:
            pass

        monkeypatch.setattr(kafka, "consumer", self.broker.consumer)
        monkeypatch.setattr(kafka, "start", start)
        monkeypatch.setattr(StreamService, "watching", lambda self: contextlib.nullcontext())
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.service.run())

    @property
    def consumer(self) -> FakeConsumer:
        return self.broker.consumers[-1]

    async def until(self, check: Callable[[], bool], within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert self.task is not None
            if self.task.done():
                self.task.result()
                raise AssertionError("the service ended")
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.service.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)
        assert self.broker.violations == []


def _sizes(n: int) -> dict[int, int]:
    return {0: n, 1: n}


async def test_records_of_random_durations_all_done_and_committed_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(13)
    delays = {
        key(TopicPartition(TOPIC, p), o): rng.uniform(0, 0.02) for p in (0, 1) for o in range(40)
    }

    async def handler(tp: TopicPartition, offset: int) -> None:
        await asyncio.sleep(delays[key(tp, offset)])

    h = Harness(monkeypatch, _sizes(40), window=3, handler=handler)
    h.start()
    await h.until(lambda: len(h.handled) == 80)
    await h.until(lambda: h.broker.committed == h.broker.ends())  # at once, idle
    await h.stop()
    assert h.most_running == 3  # the window was full, never more
    assert sorted(h.handled) == sorted(delays)
    assert h.consumer.max_poll_records == 3


async def test_a_slow_record_holds_its_partitions_commit_not_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow = key(TopicPartition(TOPIC, 0), 2)
    release = asyncio.Event()

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) == slow:
            await release.wait()
        else:
            await asyncio.sleep(0.002)

    h = Harness(monkeypatch, _sizes(30), window=2, handler=handler)
    h.start()
    # With batches of 2 nothing after the slow record's batch would start; here all do.
    await h.until(lambda: len(h.handled) == 59)
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    await h.until(lambda: h.broker.committed.get(p1) == 30)
    assert h.broker.committed.get(p0, 0) <= 2  # 2 is not done: nothing past it
    release.set()
    await h.until(lambda: h.broker.committed.get(p0) == 30)
    await h.stop()


async def test_commits_come_while_busy_but_not_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(tp: TopicPartition, offset: int) -> None:
        await asyncio.sleep(0.01)

    h = Harness(monkeypatch, {0: 120}, window=2, handler=handler)
    began = time.monotonic()
    h.start()
    await h.until(lambda: len(h.handled) == 120)
    took = time.monotonic() - began
    await h.until(lambda: h.broker.committed == h.broker.ends())
    await h.stop()
    # ~0.6 s of work: commits every COMMIT_INTERVAL_S meanwhile (a crash redoes little),
    # far fewer than one per record.
    busy = len(h.broker.commits) - 1
    assert 1 <= busy <= took / runtime.COMMIT_INTERVAL_S + 2, h.broker.commits


async def test_a_stop_waits_for_the_records_in_flight_then_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = asyncio.Event()

    async def handler(tp: TopicPartition, offset: int) -> None:
        await release.wait()

    h = Harness(monkeypatch, _sizes(10), window=3, handler=handler)
    h.start()
    await h.until(lambda: h.running == 3)
    h.service.stop()
    await asyncio.sleep(0.1)
    assert h.task is not None and not h.task.done()  # still waiting for its records
    release.set()
    await asyncio.wait_for(h.task, 5)
    assert len(h.handled) == 3  # nothing more taken after the stop
    taken = {TopicPartition(TOPIC, int(k.split("/")[0])) for k in h.handled}
    assert sum(h.broker.committed.get(tp, 0) for tp in taken) == 3
    assert h.broker.violations == []


async def test_records_that_fail_are_dead_lettered_and_count_as_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in a batch (`_process`): invalid input at once, an unexpected error after its
    retries; each dead letter stands for its record once acknowledged."""
    invalid_one, broken_one = key(TopicPartition(TOPIC, 0), 1), key(TopicPartition(TOPIC, 0), 3)
    attempts: list[str] = []

    async def handler(tp: TopicPartition, offset: int) -> None:
        attempts.append(key(tp, offset))
        if key(tp, offset) == invalid_one:
            raise invalid("$", "not a record we can use")
        if key(tp, offset) == broken_one:
            raise ZeroDivisionError("a bug")

    h = Harness(monkeypatch, {0: 5}, window=2, handler=handler)
    h.publisher.keys = lambda: {  # type: ignore[method-assign]
        f"{e.message.partition}/{e.message.offset}" if e.topic == DEAD_LETTER else e.key
        for e in h.publisher.sent
    }
    h.start()
    await h.until(lambda: h.broker.committed.get(TopicPartition(TOPIC, 0)) == 5)
    await h.stop()
    letters = [e.message for e in h.publisher.sent if e.topic == DEAD_LETTER]
    assert sorted((m.offset, m.reason) for m in letters) == [(1, "invalid_input"), (3, "internal")]
    assert attempts.count(broken_one) == runtime.MAX_UNEXPECTED_ATTEMPTS


async def test_a_failure_escaping_a_record_ends_the_service_and_cancels_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = asyncio.Event()
    failing = key(TopicPartition(TOPIC, 0), 0)

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) != failing:
            await release.wait()

    h = Harness(monkeypatch, _sizes(5), window=3, handler=handler)
    h.publisher.fail_on = failing  # its emits cannot be sent: not a record's fault
    h.start()
    assert h.task is not None
    with pytest.raises(RuntimeError, match="cannot send"):
        await asyncio.wait_for(h.task, 5)
    assert len(h.cancelled) == 2  # the others in flight did not run on
    assert h.broker.commits == []
    assert h.broker.violations == []


async def test_a_broken_consumer_is_replaced_and_its_records_in_flight_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck = key(TopicPartition(TOPIC, 1), 0)
    first_run = asyncio.Event()

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) == stuck and not first_run.is_set():
            first_run.set()
            await asyncio.sleep(3600)  # in flight when the consumer breaks
        await asyncio.sleep(0.001)

    h = Harness(monkeypatch, _sizes(8), window=2, handler=handler)
    h.start()
    await h.until(first_run.is_set)
    first = h.consumer
    first.broken = KafkaConnectionError("coordinator routine died")
    await h.until(lambda: len(h.broker.consumers) == 2, within=10)
    assert first.stopped
    assert stuck in h.cancelled
    # The new consumer (the same static member in production) starts at the committed
    # offsets: the cancelled record comes again, and everything ends done and committed.
    await h.until(lambda: h.broker.committed == h.broker.ends(), within=10)
    await h.stop()
    assert set(h.handled) == {key(tp, o) for tp in h.broker.log for o in range(8)}


async def test_a_rebalance_hands_over_what_is_done_and_forgets_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The window reads its own module's interval (patching the package's re-export did nothing,
    # so a loaded host committed p0 on the clock before the hand-over: a flaky test).
    monkeypatch.setattr(runtime.window, "COMMIT_INTERVAL_S", 60.0)  # only the hand-over commits
    release = asyncio.Event()
    held = key(TopicPartition(TOPIC, 0), 3)

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) == held:
            await release.wait()

    h = Harness(monkeypatch, _sizes(10), window=2, handler=handler)
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    h.start()
    # All done but p0's 3, in flight: the window is never idle, so nothing was committed.
    await h.until(lambda: h.running == 1 and len(h.handled) == 19)
    assert h.broker.commits == []
    # p0 goes to another member while its record 3 is in flight; p1 stays.
    await h.consumer.rebalance(keep={p1})
    assert h.broker.committed == {p0: 3, p1: 10}  # what was done, handed over
    release.set()
    await h.until(lambda: held in h.handled)
    await asyncio.sleep(0.05)
    assert h.broker.committed[p0] == 3  # never committed by a member that no longer owns it
    await h.stop()


async def test_a_partition_back_from_another_member_is_not_committed_backwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its bookkeeping was forgotten when it left: a record of ours that finishes after it
    came back (moved on by another member meanwhile) does not commit the old watermark."""
    release = asyncio.Event()
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    held = key(p0, 3)

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) == held:
            await release.wait()

    h = Harness(monkeypatch, _sizes(10), window=2, handler=handler)
    h.broker.hold_back(p0, 4)
    h.start()
    await h.until(lambda: h.running == 1 and len(h.handled) == 13)
    await h.consumer.rebalance(keep={p1})
    assert h.broker.committed[p0] == 3
    h.broker.produce(p0)  # another member handles 3-9 of p0 and commits 10
    h.broker.committed[p0] = 10
    await h.consumer.rebalance(keep={p0, p1})
    release.set()  # our 3, from before, finishes now
    await h.until(lambda: held in h.handled)
    await asyncio.sleep(0.4)
    assert h.broker.committed[p0] == 10
    await h.stop()  # checks that no commit moved an offset back


async def test_records_fetched_before_a_rebalance_are_dropped_not_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race: a background getmany gets records, then a rebalance forgets the partition
    before the loop takes them. Taken, they would start its bookkeeping above record 0, still
    in flight, and a commit past 0 would follow. Dropped, they come again from the committed
    offset once the new assignment has fetched."""
    release = asyncio.Event()
    p0 = TopicPartition(TOPIC, 0)
    held = key(p0, 0)

    async def handler(tp: TopicPartition, offset: int) -> None:
        if key(tp, offset) == held:
            await release.wait()

    h = Harness(monkeypatch, {0: 6}, window=2, handler=handler)
    h.broker.hold_back(p0, 1)
    rebalances: list[asyncio.Task[None]] = []

    def on_fetch(n: int) -> None:
        if n == 2:  # record 0 in flight; this drain (in the background) hands over record 1
            rebalances.append(asyncio.ensure_future(h.consumer.rebalance({p0}, quiet_s=0.5)))

    h.start()
    await h.until(lambda: h.running == 1)
    h.consumer.on_fetch = on_fetch
    h.broker.produce(p0)
    await h.until(lambda: bool(rebalances) and rebalances[0].done())
    await asyncio.sleep(0.8)  # past the quiet time and more than one commit interval
    assert h.broker.violations == []
    assert h.broker.committed.get(p0, 0) == 0
    release.set()
    await h.until(lambda: h.broker.committed.get(p0) == 6)
    await h.stop()  # checks no commit ever passed a record not done


def test_a_window_has_no_flush_and_is_at_least_one() -> None:
    async def handle(msg: Any) -> list[Emit]:
        return []

    async def flush() -> list[Emit]:
        return []

    # The mode is the spec's type (issue #23): a flush on a window is no field of it (mypy
    # says so too), a window on a batch neither.
    with pytest.raises(TypeError, match="flush"):
        WindowSpec("t", WORK_ORDERS, WorkOrder, "g", handle=handle, flush=flush, window=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="window"):
        BatchSpec("t", WORK_ORDERS, WorkOrder, "g", handle=handle, window=2)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="at least 1"):
        WindowSpec("t", WORK_ORDERS, WorkOrder, "g", handle=handle, window=0)


def test_the_window_setting_applies_only_to_a_windowed_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MATTERFAB_BUILDER_WINDOW", "5")
    assert runtime.service_settings("builder").window == 5
    monkeypatch.setenv("MATTERFAB_BUILDER_WINDOW", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        runtime.service_settings("builder")


def test_the_batch_size_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_SIGNER_MAX_BATCH", "2")
    assert runtime.service_settings("signer").max_batch == 2
    monkeypatch.setenv("MATTERFAB_SIGNER_MAX_BATCH", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        runtime.service_settings("signer")
