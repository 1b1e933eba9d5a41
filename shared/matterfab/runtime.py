"""The loop every stream service runs: consume a batch, handle it, emit, then commit.

Delivery is at least once: offsets are committed only after every message of a batch was
handled and everything it emitted was acknowledged by the broker, so a crash at any point
means redelivery, never loss. (A service whose records are long and uneven, the builder's
lots, runs a sliding window instead of batches, `ServiceSpec.window`: a record is taken as a
slot frees, and each partition is committed up to its first record not yet done.) Handlers
are therefore idempotent (write-once objects, deterministic results). What a failure means
is decided in one table, `matterfab.failures.FailurePolicy` (first matching rule wins):

- `InvalidInput` or an unknown message: dead-letter it with the reason and go on;
- `IntegrityError` (a write-once object exists with other bytes): dead-letter and alarm;
- a permanent fault (credentials refused, bucket or topic missing, permission denied): no
  retry; the service stops taking records (nothing committed), `/healthz` answers 503 naming
  the fault, one log line says it, and the process stays up until stopped (a restart after the
  fix takes the records again);
- a transient failure (broker, S3 or network down): retry with backoff, without committing;
  a service waits for Kafka and S3 before it starts (and watches them while it runs: one log
  line per failed attempt, one when they are back, `/healthz` 503 meanwhile), and stops at
  start-up only on what no wait fixes (credentials refused, bucket or topic missing);
- a consumer that does not join its group while Kafka answers (a member departed without
  leaving holds the group): `JoinStalled`, one line naming the group and the members it waits
  for, never "Kafka unreachable"; the join is tried again at once;
- any other exception: retry a few times, then dead-letter, so one poison message cannot stall
  a partition forever.

Emitting has one path, `Publisher.send` (acknowledged before it returns): the runtime sends what
a handler returns right after the handler, and a handler that must publish before it ends is
handed that same publisher at construction (`Context.publisher`; see `Publisher`).
A long-running service never exits because Kafka or S3 is slow or away: it waits, with backoff,
and still stops promptly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab import health, kafka, metrics
from matterfab.backoff import Backoff
from matterfab.config import KafkaSettings
from matterfab.errors import InvalidInput, JoinStalled, StackError, Unreachable
from matterfab.failures import (
    HTTP_TRANSIENT,
    MAX_UNEXPECTED_ATTEMPTS,
    POLICY,
    TRANSIENT,
    Action,
    FailurePolicy,
    PermanentFault,
    Rule,
)
from matterfab.keywrap import KeyWrapper
from matterfab.messages import DEAD_LETTER, DeadLetter, ErrorItem, encode
from matterfab.messages.base import Message
from matterfab.messages.codec import decode
from matterfab.messages.dead_letter import MAX_PAYLOAD_CHARS
from matterfab.messages.lots import LotAllocated, LotAttested
from matterfab.s3 import ObjectStore
from matterfab.watermarks import Taken, Watermarks

log = logging.getLogger(__name__)
LOT_MESSAGES = (LotAllocated, LotAttested)  # a message of many devices (metrics.DEVICES)

# What a service's handler takes: the topic's model, or what the spec's own `decode` makes of
# the raw bytes (the allocator keeps an unparseable order as a `Submission` to reject it).
T = TypeVar("T")

__all__ = [
    "HTTP_TRANSIENT",
    "MAX_UNEXPECTED_ATTEMPTS",
    "TRANSIENT",
    "Action",
    "FailurePolicy",
    "PermanentFault",
    "Rule",
]
# Answers meaning the broker no longer knows our idempotent producer: only a new one helps.
PRODUCER_STATE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)
# A getmany with nothing to return gives back after this long (idle hooks, stop checks).
POLL_MS = 500
# A windowed service commits what is done at most this often while records are in flight (a
# commit is a broker round trip; a crash redelivers at most this long's work more), and at
# once when none is.
COMMIT_INTERVAL_S = 0.25
# How long a rebalance may wait for the commit of what is done of the partitions leaving.
HAND_OVER_TIMEOUT_S = 5.0
# What a window's getmany got, with the count of revocations when it got it.
_Fetched = tuple[int, dict[TopicPartition, list[ConsumerRecord]]]


@dataclass(frozen=True)
class Emit:
    """A message to send: topic, key and the message."""

    topic: str
    key: str
    message: BaseModel


# `Publisher.send`, as handed to a handler that must publish before it ends.
Send = Callable[[Sequence[Emit]], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """A further topic a service consumes, with its message model and handler."""

    model: type[Message]
    handle: Callable[[Any], Awaitable[Sequence[Emit]]]


@dataclass
class ServiceSpec(Generic[T]):
    """What a stream service consumes and how it handles one message.

    `model` is the topic's message model; the handler takes a `T`: the model itself when
    `decode` is left out (codec.decode(raw, model)), else whatever `decode` returns.
    """

    name: str
    topic: str
    model: type[Message]
    group_id: str
    handle: Callable[[T], Awaitable[Sequence[Emit]]]
    decode: Callable[[bytes], T] | None = None
    concurrency: int = 1
    max_batch: int = 200
    on_start: Callable[[], Awaitable[None]] | None = None
    on_idle: Callable[[], Awaitable[Sequence[Emit]]] | None = None
    routes: dict[str, Route] = field(default_factory=dict)  # more topics: topic -> Route
    # Services that gather records in memory and store them in bulk: `flush` makes everything
    # handled so far durable and returns what to announce. With a flush, offsets are committed
    # only after it, and it runs once `linger_s` passed since the last one (or on stop), so
    # one bulk write covers many batches. Without, every batch is committed as it is handled.
    flush: Callable[[], Awaitable[Sequence[Emit]]] | None = None
    linger_s: float = 0.0
    # Consumer options beyond the runtime's (the station's long max_poll_interval_ms), and a
    # listener told of every rebalance.
    consumer_options: dict[str, Any] = field(default_factory=dict)
    listener: ConsumerRebalanceListener | None = None
    # A static member leaves its group on a clean stop (its partitions move on at once);
    # False keeps them for its return (a station restarting finds its image uncommitted).
    leave_on_stop: bool = True
    # How messages name the group besides its id (a station's "line <line>").
    group_label: str = ""
    # A sliding window instead of batches: up to `window` records in flight at all times, the
    # next one taken as soon as one is done, each partition committed up to its first record
    # not done (matterfab.watermarks). For records that take long and unevenly (the builder's
    # lots), where a batch holds every slot until its slowest record is done and a record
    # that arrives meanwhile waits for the whole batch. With a window `concurrency` and
    # `max_batch` are not used, and there is no `flush` (that commits batch by batch).
    window: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"{self.name}: window must be at least 1, not {self.window}")
        if self.window is not None and self.flush is not None:
            raise ValueError(f"{self.name}: a flush commits batch by batch; it needs window=None")


class Publisher:
    """The producer a stream service publishes with: the one way anything is sent.

    The runtime sends the emits a handler returns through it after the handler, and commits the
    handled offsets only after the broker acknowledged them. A handler that must publish before
    it ends (the allocator: a million-device order cannot hold all its emits in memory) is given
    this same object at construction (`Context.publisher`, usually its `send`) and awaits
    `send` for each batch: every message is acknowledged before the handler returns, so the
    commit still comes after it. There is no other way to emit.
    """

    def __init__(self, name: str, settings: KafkaSettings):
        self.name = name
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the producer (within the connect timeout; Unreachable otherwise)."""
        producer = kafka.producer(self.settings)
        await kafka.start(producer, self.settings, "producer")
        self.producer = producer

    async def stop(self) -> None:
        """Flush what is queued, then stop the producer."""
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await producer.flush()
            finally:
                await producer.stop()

    async def send(self, emits: Sequence[Emit]) -> None:
        """Send messages and wait until the broker has acknowledged every one."""
        if not emits:
            return
        if self.producer is None:
            raise RuntimeError(f"{self.name}: publisher used before the service started")
        backoff = Backoff()
        while True:
            producer = self.producer
            try:
                futures = [await self._send_one(e) for e in emits]
                await asyncio.gather(*futures)
                return
            except PRODUCER_STATE_LOST as exc:
                # The broker forgot this producer's sequence numbers (it restarted): every
                # later send would fail the same way. A new producer gets a new identity.
                log.warning("%s: producer state lost (%s); new producer", self.name, exc)
                await self._renew(producer)
            except KafkaError as exc:
                if POLICY.action(exc) is Action.STOP:  # refused: ACLs, credentials
                    raise PermanentFault("sending", exc) from exc
                # Resending is safe: consumers of our topics are idempotent.
                delay = backoff.next_delay()
                log.warning(
                    "%s: send failed (attempt %d: %s); next attempt in %.1fs",
                    self.name,
                    backoff.attempts,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _renew(self, failed: AIOKafkaProducer | None) -> None:
        """Replace the producer, once, however many senders saw it fail."""
        async with self._lock:
            if self.producer is not failed:
                return  # another sender already replaced it
            fresh = kafka.producer(self.settings)
            await kafka.start(fresh, self.settings, "producer")
            self.producer = fresh
        if failed is not None:
            with contextlib.suppress(Exception):
                await failed.stop()

    async def _send_one(self, emit: Emit) -> Any:
        """Queue one message; one too big for the broker becomes a dead letter instead.

        A too-big message fails the same way on every retry: retrying it (as for other Kafka
        errors) would stall the service on this batch forever.
        """
        assert self.producer is not None
        value = encode(emit.message)
        try:
            return await self.producer.send(emit.topic, value, key=emit.key.encode())
        except MessageSizeTooLargeError:
            log.error(
                "%s: a %d-byte message for %s is too large to send; dead-lettered",
                self.name,
                len(value),
                emit.topic,
            )
            metrics.FAILURES.labels(self.name, "too_large").inc()
            letter = DeadLetter(
                service=self.name,
                topic=emit.topic,
                partition=-1,
                offset=-1,
                key=emit.key,
                reason="too_large",
                errors=[
                    ErrorItem(
                        field="$",
                        message=f"emitted message is {len(value)} bytes, over the broker limit",
                    )
                ],
                payload=value[:MAX_PAYLOAD_CHARS].decode("utf-8", "replace"),
            )
            return await self.producer.send(DEAD_LETTER, encode(letter), key=emit.key.encode())


def join_stalled_message(
    spec: ServiceSpec[Any],
    group: kafka.GroupState,
    instance_id: str | None,
    settings: KafkaSettings,
) -> str:
    """One line: which group would not take us in, and what it waits for."""
    who = f"{spec.group_label} (group {group.group})" if spec.group_label else group.group
    others = [m.name for m in group.members if not instance_id or m.instance_id != instance_id]
    answers = f"Kafka at {settings.bootstrap} answers"
    if others and group.state in ("PreparingRebalance", "CompletingRebalance"):
        many = "s" if len(others) > 1 else ""
        return (
            f"{who}: waiting for departed member{many} {', '.join(sorted(others))} (group "
            f"{group.state} until {'they rejoin or are' if many else 'it rejoins or is'} "
            f"removed; {answers})"
        )
    listed = f": {', '.join(sorted(others))}" if others else ""
    return (
        f"{who}: not joined within {settings.connect_timeout_s:g}s (group {group.state}, "
        f"{len(others)} other member{'' if len(others) == 1 else 's'}{listed}; {answers})"
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures that go away by themselves (a server down, a timeout)."""
    return POLICY.transient(exc)


class StreamService(Generic[T]):
    """Run one ServiceSpec against a broker until stopped."""

    def __init__(
        self,
        spec: ServiceSpec[T],
        settings: KafkaSettings,
        instance_id: str | None = None,
        state: health.Health | None = None,
        dependencies: Sequence[health.Dependency] = (),
        publisher: Publisher | None = None,
        policy: FailurePolicy = POLICY,
    ):
        self.spec = spec
        self.policy = policy
        self.settings = settings
        self.health = state or health.Health()
        # What to wait for before starting and to watch while running: Kafka, plus what the
        # caller adds (the S3 store).
        self.dependencies = [*dependencies]
        if not any(d.name == "kafka" for d in self.dependencies):
            self.dependencies.append(health.kafka_dependency(settings))
        # Static group membership (KIP-345): a restarted instance takes its partitions back at
        # once. Without it a crashed (SIGKILLed) member blocks the group until the broker
        # expires it, and the embedded broker never does (measured: > 400 s, not 10 s).
        self.instance_id = instance_id
        self.consumer: AIOKafkaConsumer | None = None
        self._marks: Watermarks[TopicPartition] = Watermarks()  # a window's; new per consumer
        self._revocations = 0  # rebalances that took partitions away (a window's fetches)
        self.publisher = publisher or Publisher(spec.name, settings)
        self._stopping = asyncio.Event()
        # One commit at a time: the window's periodic commit and a rebalance's hand-over each
        # compute what to commit under it, so a late commit never moves an offset back.
        self._commit_lock = asyncio.Lock()
        self.processed = 0

    def stop(self) -> None:
        """Ask the loop to finish its current batch (or the records in flight) and stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Start clients in order, process until stopped, stop clients in reverse.

        A broker that answers the probe but is too slow to start the clients (CPU contention)
        or goes away meanwhile sends the service back to waiting, with backoff: it never exits
        over an outage, and a stop asked at any point ends it at once.
        """
        spec = self.spec
        backoff = Backoff()
        try:
            while True:
                if not await self._until_stopped(self.available()):
                    return  # asked to stop while waiting for the broker
                try:
                    if not await self._until_stopped(self._start_clients()):
                        return
                except (Unreachable, JoinStalled) as exc:
                    if isinstance(exc, JoinStalled):
                        backoff.reset()  # not an outage: the join attempt itself took its time
                    if not await self._back_off(backoff, "starting failed", exc, "waiting again"):
                        return
                    continue
                log.info("%s consuming %s as group %s", spec.name, spec.topic, spec.group_id)
                try:
                    async with self.watching():
                        await self._loop()
                except PermanentFault as fault:
                    await self._park(fault)
                    return
                except KafkaError as exc:
                    # The consumer itself broke (measured: aiokafka 0.14.0's coordinator routine
                    # died on an empty assignment from the embedded broker, and the service
                    # used to exit, leaving a dead static member that stalled the group for
                    # good). A new consumer with the same static id takes the member's place;
                    # records not committed come again, which idempotent handlers absorb.
                    if not await self._back_off(backoff, "consumer failed", exc, "restarting it"):
                        return
                    continue
                await self._leave_group()
                return
        finally:
            await self._stop_clients()

    async def _park(self, fault: PermanentFault) -> None:
        """A permanent fault: stop taking records (nothing more is committed), say it once and in
        `/healthz`, and wait to be stopped. No retry: only a fix in the deployment helps."""
        self.health.down[self.spec.name] = str(fault)
        metrics.FAILURES.labels(self.spec.name, "permanent").inc()
        log.error(
            "%s: %s; no more records are taken until the service is restarted after the fix",
            self.spec.name,
            fault,
        )
        await self._stop_clients()
        await self._stopping.wait()

    async def _back_off(self, backoff: Backoff, what: str, exc: BaseException, then: str) -> bool:
        """Stop the clients, log one line, wait the next backoff delay; False if asked to stop."""
        await self._stop_clients()
        delay = backoff.next_delay()
        log.warning(
            "%s: %s (attempt %d: %s); %s in %.1fs",
            self.spec.name,
            what,
            backoff.attempts,
            exc,
            then,
            delay,
        )
        return await self._until_stopped(asyncio.sleep(delay))

    async def _start_clients(self) -> None:
        """The producer, the spec's start hook, then the consumer."""
        spec = self.spec
        await self.publisher.start()
        if spec.on_start:
            await spec.on_start()
        static = {"group_instance_id": self.instance_id} if self.instance_id else {}
        topics = [spec.topic, *spec.routes]
        self.consumer = consumer = kafka.consumer(
            self.settings,
            *([] if spec.listener or spec.window else topics),
            group_id=spec.group_id,
            max_poll_records=spec.window or spec.max_batch,
            **static,
            **spec.consumer_options,
        )
        listener = spec.listener
        if spec.window:
            # Bookkeeping per consumer: a restarted one starts from the committed offsets.
            self._marks = Watermarks()
            listener = _HandOver(self, consumer, self._marks, spec.listener)
        if listener:
            consumer.subscribe(topics, listener=listener)
        try:
            await kafka.start(consumer, self.settings, "consumer")
        except Unreachable as exc:
            raise await self._join_problem(exc) from exc

    async def _join_problem(self, failed: Unreachable) -> StackError:
        """Why the consumer did not start: Kafka away (`failed` as it is), or, when Kafka
        answers, the group that does not take us in, named with what it waits for."""
        spec = self.spec
        try:
            await self._kafka_answers()
            async with asyncio.timeout(self.settings.connect_timeout_s):
                async with kafka.admin(self.settings) as client:
                    group = await kafka.describe_group(client, spec.group_id)
        except (StackError, KafkaError, OSError, TimeoutError):
            return failed  # Kafka does not answer (or not in time): an outage
        return JoinStalled(join_stalled_message(spec, group, self.instance_id, self.settings))

    async def _stop_clients(self) -> None:
        """The consumer, then the producer (flushed); each only if started."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        await self.publisher.stop()

    async def available(self) -> None:
        """Wait until every dependency answers (backoff, one line per attempt)."""
        await health.wait_until_available(self.dependencies, self.health)

    def watching(self) -> Any:
        """Watch the dependencies while the block runs; the process counts as started.

        Kafka is probed through the producer's own connections (a metadata request), not a
        new client every 5 s: with those, the signing case of tests/reliability/
        test_broker_kill.py (after test_bad_orders) stalled 4 of 4 runs, the signer's group
        idle for 4 minutes after the hard broker restart. Through the producer it passed 2 of
        3 runs; it also stalls with the pre-#15 runtime (2 of 6 runs): the stall is the
        restored group state (it ends with "member_id was not recognized"), which fresh
        clients make likelier.
        """
        self.health.started = True
        where = f"Kafka at {self.settings.bootstrap}"
        watched = [d for d in self.dependencies if d.name != "kafka"]
        watched.append(health.Dependency("kafka", where, self._kafka_answers))
        return health.watching(watched, self.health)

    async def _kafka_answers(self) -> None:
        """One metadata round trip over the producer's connections; Unreachable if none."""
        producer = self.publisher.producer
        assert producer is not None
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await producer.client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise kafka.failure(self.settings, exc) from exc

    async def _until_stopped(self, work: Awaitable[Any]) -> bool:
        """Await `work` unless a stop is asked first; True when the work finished."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()  # re-raise its failure
        return True

    async def _loop(self) -> None:
        if self.spec.window:
            await self._window_loop()
        else:
            await self._batch_loop()

    async def _batch_loop(self) -> None:
        """Fetch a batch, handle its records (`concurrency` at once), commit, fetch the next."""
        assert self.consumer is not None
        sem = asyncio.Semaphore(self.spec.concurrency)
        uncommitted: dict[TopicPartition, int] = {}
        flushed_at = time.monotonic()

        async def flush_and_commit() -> None:
            nonlocal flushed_at
            if self.spec.flush:
                await self.publisher.send(await self._retrying(self.spec.flush, "flush"))
            flushed_at = time.monotonic()
            if uncommitted:
                await self._commit(self.consumer, dict(uncommitted))
                uncommitted.clear()

        while not self._stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.spec.max_batch)
            if not batches:
                if uncommitted:
                    await flush_and_commit()
                if self.spec.on_idle:
                    await self.publisher.send(await self._retrying(self.spec.on_idle, "idle"))
                continue
            records = [r for recs in batches.values() for r in recs]

            async def one(record: ConsumerRecord) -> None:
                async with sem:
                    emits = await self._process(record)
                # Announce each result as soon as it is made (an image is ready for stations
                # within its own build time, not the batch's); commit still waits for all.
                await self.publisher.send(emits)

            await _all_or_none([asyncio.ensure_future(one(r)) for r in records])
            uncommitted.update({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
            if not self.spec.flush or time.monotonic() - flushed_at >= self.spec.linger_s:
                await flush_and_commit()
            self.processed += len(records)
            metrics.BATCHES.labels(self.spec.name).inc()
            log.info("batch handled", extra={"mf_count": len(records)})
        if uncommitted:  # stopping: what was handled is made durable before we leave
            await flush_and_commit()

    async def _window_loop(self) -> None:
        """Keep up to `window` records in flight; commit each partition's done prefix.

        Whenever a slot is free the loop takes what the consumer has already fetched, at once,
        and if slots are still free it waits for more in the background (one getmany at a
        time, for at most the free slots). Each record is handled and its emits published as
        soon as it is done, as in a batch. Commits come from `self._marks`, so never past a
        record not done: every COMMIT_INTERVAL_S while records are in flight, at once when
        none is and nothing waits to be taken, and last on a clean stop, which takes no more
        records and waits for those in flight. A failure that escapes a record's handling, or
        a consumer that breaks (KafkaError: `run` starts a new one), ends the loop: the
        records in flight are cancelled first (uncommitted, they come again), never left
        running against clients about to stop.

        Records a background getmany got before a rebalance took partitions away are dropped,
        not taken: the rebalance forgot those partitions' bookkeeping (`_HandOver`), and
        taking them would start it again above records still in flight. The new assignment
        starts every partition at its committed offset, so they come again (here or to the
        new owner).
        """
        assert self.consumer is not None and self.spec.window
        consumer, marks, window = self.consumer, self._marks, self.spec.window
        tasks: dict[asyncio.Task[None], Taken[TopicPartition]] = {}
        fetch: asyncio.Task[_Fetched] | None = None  # the background getmany, if any
        stop = asyncio.ensure_future(self._stopping.wait())
        committed_at = time.monotonic()
        handled = 0  # records done since the last commit

        def take(fetched: _Fetched) -> None:
            revocations, batches = fetched
            if revocations != self._revocations:
                return  # got before a rebalance: they come again
            for tp, records in batches.items():
                for record in records:
                    task = asyncio.create_task(self._handle_and_send(record))
                    tasks[task] = marks.take(tp, record.offset)

        async def commit() -> None:
            nonlocal committed_at, handled
            committed_at = time.monotonic()
            await self._commit_done(consumer, marks)
            if handled:
                metrics.BATCHES.labels(self.spec.name).inc()
                log.info("batch handled", extra={"mf_count": handled})
                handled = 0

        try:
            while True:
                stopping = self._stopping.is_set()
                if stopping and not tasks:
                    break
                idle = False
                if not stopping and fetch is None and len(tasks) < window:
                    take(await self._fetch(consumer, window - len(tasks), 0))
                    idle = not tasks
                    if len(tasks) < window:
                        fetch = asyncio.create_task(
                            self._fetch(consumer, window - len(tasks), POLL_MS)
                        )
                if marks.committable() and (
                    idle or time.monotonic() - committed_at >= COMMIT_INTERVAL_S
                ):
                    await commit()
                if idle and self.spec.on_idle:
                    await self.publisher.send(await self._retrying(self.spec.on_idle, "idle"))
                waiting: set[asyncio.Future[Any]] = set(tasks)
                if not stopping:
                    waiting |= {stop, *([fetch] if fetch else [])}
                timeout = None
                if marks.committable():
                    timeout = max(0.0, committed_at + COMMIT_INTERVAL_S - time.monotonic())
                finished, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in [t for t in finished if t in tasks]:
                    taken = tasks.pop(task)
                    task.result()  # a failure that escaped `_process` ends the loop, as a batch's
                    marks.done(taken)
                    handled += 1
                    self.processed += 1
                if fetch is not None and fetch.done() and not self._stopping.is_set():
                    fetched, fetch = fetch.result(), None  # KafkaError: the consumer broke
                    take(fetched)
            await commit()  # stopping: everything taken is done; commit it before we leave
        finally:
            stop.cancel()
            left = [t for t in (fetch, *tasks) if t is not None]
            for task in left:
                task.cancel()  # a no-op for those done; gather collects their outcomes too
            await asyncio.gather(*left, return_exceptions=True)

    async def _fetch(self, consumer: AIOKafkaConsumer, most: int, wait_ms: int) -> _Fetched:
        """Up to `most` records (waiting up to `wait_ms` for some), with the rebalances seen."""
        batches = await consumer.getmany(timeout_ms=wait_ms, max_records=most)
        # No await between getmany handing the records over and this count: it is exact.
        return self._revocations, batches

    async def _handle_and_send(self, record: ConsumerRecord) -> None:
        """One record of a window: handle it, then publish what it emits at once."""
        await self.publisher.send(await self._process(record))

    async def _commit_done(
        self,
        consumer: AIOKafkaConsumer,
        marks: Watermarks[TopicPartition],
        partitions: set[TopicPartition] | None = None,
    ) -> None:
        """Commit what is done of the partitions (all, or these) still assigned."""
        async with self._commit_lock:
            assigned = consumer.assignment()
            ready = {tp: m for tp, m in marks.committable(partitions).items() if tp in assigned}
            if ready and await self._commit(consumer, {tp: m.offset for tp, m in ready.items()}):
                marks.committed(ready)

    async def _leave_group(self) -> None:
        """On a clean stop, leave the group even as a static member (see kafka.leave_group)."""
        if not self.spec.leave_on_stop or not self.instance_id or self.consumer is None:
            return
        try:
            await kafka.leave_group(self.consumer, self.spec.group_id)
        except KafkaError as exc:  # best effort, as aiokafka's own leave
            log.warning("%s: LeaveGroup failed: %s", self.spec.name, exc)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Commit these offsets; False (logged) if the broker refused or was away."""
        try:
            await consumer.commit(offsets)
            return True
        except CommitFailedError:
            # The group rebalanced while we worked: the new owner re-processes these records,
            # which idempotent handlers turn into no-ops.
            log.warning(
                "%s: commit after rebalance refused; records will be redelivered", self.spec.name
            )
        except KafkaError as exc:
            # Broker unreachable: the records stay uncommitted and come back after a restart,
            # which is safe (idempotent handlers); never crash the loop over a commit.
            log.warning("%s: commit failed (%s); records may be redelivered", self.spec.name, exc)
        return False

    async def _retrying(self, fn: Callable[[], Awaitable[Sequence[Emit]]], what: str) -> list[Emit]:
        """Run `fn` as the policy says: retry what is transient (without end) and what is
        unexpected (a few times), raise a dead-letter failure at once, and turn a permanent one
        into `PermanentFault`."""
        backoff = Backoff()
        while True:
            try:
                return list(await fn())
            except Exception as exc:
                action = self.policy.action(exc)
                if action is Action.STOP:
                    if isinstance(exc, PermanentFault):
                        raise
                    raise PermanentFault(what, exc) from exc
                if action is Action.DEAD_LETTER or (
                    action is Action.RETRY_THEN_DEAD_LETTER
                    and backoff.attempts + 1 >= self.policy.max_unexpected_attempts
                ):
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "%s: %s failed (attempt %d: %s: %s); next attempt in %.1fs",
                    self.spec.name,
                    what,
                    backoff.attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _process(self, record: ConsumerRecord) -> list[Emit]:
        spec = self.spec
        metrics.IN_FLIGHT.labels(spec.name).inc()
        started = time.perf_counter()
        try:
            raw = record.value or b""
            route = spec.routes.get(record.topic)
            if route is not None:
                msg: Any = decode(raw, route.model)
                handle: Callable[[Any], Awaitable[Sequence[Emit]]] = route.handle
            else:
                msg = spec.decode(raw) if spec.decode else decode(raw, spec.model)
                handle = spec.handle
            emits = await self._retrying(lambda: handle(msg), "handling")
            metrics.MESSAGES.labels(spec.name, record.topic, "ok").inc()
            devices = getattr(msg, "devices", None) if isinstance(msg, LOT_MESSAGES) else None
            metrics.DEVICES.labels(spec.name, record.topic).inc(len(devices) if devices else 1)
            return emits
        except Exception as exc:
            rule = self.policy.rule_for(exc)
            if rule.action is Action.STOP:
                if isinstance(exc, PermanentFault):
                    raise
                raise PermanentFault("handling", exc) from exc
            return [self._set_aside(record, rule, exc)]
        finally:
            metrics.IN_FLIGHT.labels(spec.name).dec()
            metrics.PROCESSING.labels(spec.name).observe(time.perf_counter() - started)

    def _set_aside(self, record: ConsumerRecord, rule: Rule, exc: Exception) -> Emit:
        """The dead letter for a record given up on, logged as its rule says."""
        name, where = self.spec.name, _where(record)
        if rule.action is Action.DEAD_LETTER and isinstance(exc, InvalidInput):
            log.warning("%s: invalid message set aside: %s", name, exc, extra=where)
            return self._dead_letter(record, rule.reason, exc.errors)
        if rule.action is Action.DEAD_LETTER:
            alarm = "INTEGRITY ALARM" if rule.reason == "integrity" else rule.reason
            log.error("%s: %s: %s", name, alarm, exc, extra=where)
            return self._dead_letter(record, rule.reason, [ErrorItem(field="$", message=str(exc))])
        log.exception("%s: giving up on a message", name, extra=where)
        item = ErrorItem(field="$", message=f"{type(exc).__name__}: {exc}"[:500])
        return self._dead_letter(record, "internal", [item])

    def _dead_letter(self, record: ConsumerRecord, reason: str, errors: Sequence[Any]) -> Emit:
        metrics.MESSAGES.labels(self.spec.name, record.topic, "dead_letter").inc()
        metrics.FAILURES.labels(self.spec.name, reason).inc()
        items = [e if isinstance(e, ErrorItem) else ErrorItem.of(e) for e in errors]
        key = record.key.decode("utf-8", "replace") if record.key else None
        letter = DeadLetter(
            service=self.spec.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            reason=reason,
            errors=items,
            payload=(record.value or b"").decode("utf-8", "replace")[:MAX_PAYLOAD_CHARS],
        )
        return Emit(
            DEAD_LETTER, key or f"{record.topic}/{record.partition}/{record.offset}", letter
        )


class _HandOver(ConsumerRebalanceListener):
    """A windowed service's rebalance listener, around the spec's own (if any).

    On a revocation it commits what is done of the partitions leaving (bounded: a rebalance
    waits for it) and forgets their bookkeeping; records of theirs still in flight finish and
    publish, but count for nothing (they come again to the partition's next owner). Bumping
    `_revocations` first tells the window to drop records fetched before now.
    """

    def __init__(
        self,
        service: StreamService[Any],
        consumer: AIOKafkaConsumer,
        marks: Watermarks[TopicPartition],
        inner: ConsumerRebalanceListener | None,
    ):
        self.service = service
        self.consumer = consumer
        self.marks = marks
        self.inner = inner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is done of `revoked`, forget them, then tell the spec's listener."""
        self.service._revocations += 1
        try:
            async with asyncio.timeout(HAND_OVER_TIMEOUT_S):
                await self.service._commit_done(self.consumer, self.marks, set(revoked))
        except TimeoutError:
            log.warning(
                "%s: no commit of the revoked partitions in %.0fs; their records come again",
                self.service.spec.name,
                HAND_OVER_TIMEOUT_S,
            )
        finally:
            self.marks.forget(revoked)
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do here (a new assignment starts at the committed offsets); pass it on."""
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_assigned(assigned))


async def _all_or_none(tasks: list[asyncio.Future[None]]) -> None:
    """Await every task; if one fails, cancel the others (they never outlive the loop) and
    raise its failure."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


def _where(record: ConsumerRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


async def run_until_signalled(service: StreamService[Any], *more: StreamService[Any]) -> None:
    """Run a service (and any more of one process) until SIGTERM or SIGINT, then let each
    finish its batch and stop."""
    loop = asyncio.get_running_loop()
    every = (service, *more)

    def stop() -> None:
        for s in every:
            s.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)
    if not more:
        await service.run()
        return
    tasks = [asyncio.ensure_future(s.run()) for s in every]
    try:
        await asyncio.gather(*tasks)
    finally:
        stop()  # one ended (or failed): the others finish their batch and stop too
        await asyncio.gather(*tasks, return_exceptions=True)


class ServiceSettings(BaseSettings):
    """Knobs of every stream service (env `MATTERFAB_<SERVICE>_…`, e.g. `…_CONCURRENCY`)."""

    model_config = SettingsConfigDict(extra="ignore")

    group_id: str | None = None
    instance_id: str | None = None  # static group membership: unique per running instance
    concurrency: int | None = None
    # Records in flight, for a service that runs a window (the builder); a batch service
    # (`ServiceSpec.window` None) ignores it.
    window: int | None = Field(default=None, ge=1)
    # Records per batch of a batch service (fewer: smaller commits, more often); a windowed
    # service ignores it.
    max_batch: int | None = Field(default=None, ge=1)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"


@dataclass
class Context:
    """Resources a service's setup receives: it fetches none of them itself."""

    name: str
    settings: ServiceSettings
    kafka: KafkaSettings
    store: ObjectStore
    wrapper: KeyWrapper
    # What the service publishes with, the runtime included: for a handler that must publish
    # before it ends (see Publisher); it starts with the service, before any handler runs.
    publisher: Publisher


def service_settings(name: str) -> ServiceSettings:
    """The settings of service `name` from its environment variables."""
    cls = type(
        f"{name.title()}Settings",
        (ServiceSettings,),
        {
            "model_config": SettingsConfigDict(
                env_prefix=f"MATTERFAB_{name.upper()}_", extra="ignore"
            )
        },
    )
    return cls()


async def serve(
    name: str,
    setup: Callable[[Context], Awaitable[ServiceSpec[Any] | Sequence[ServiceSpec[Any]]]],
) -> None:
    """Run a stream service: config, S3, key wrapper, metrics, then the consume loop.

    `setup` may return more than one spec (the signer: lots, and device-key CSRs apart so a
    CSR never waits behind a batch of lots): the first is the service's own and takes the
    `MATTERFAB_<SERVICE>_…` knobs; each further one runs as its own consumer in its own
    group, with its own producer, in the same process, and all stop together.
    """
    from matterfab import config, logs  # late: keeps `import runtime` cheap for tests

    logs.setup(name)
    kafka.quiet_connection_logs()
    settings = service_settings(name)
    kafka_settings = config.load_kafka_settings()
    state = health.Health()
    server = await health.serve(state, settings.metrics_port, settings.metrics_host)
    try:
        async with ObjectStore.open(config.load_s3_settings()) as store:
            deps = [health.s3_dependency(store), health.kafka_dependency(kafka_settings)]
            # Setup may read the store (profiles, firmware): wait for both first.
            await health.wait_until_available(deps, state)
            publisher = Publisher(name, kafka_settings)
            wrapper = KeyWrapper(config.load_kek())
            ctx = Context(name, settings, kafka_settings, store, wrapper, publisher)
            made = await setup(ctx)
            spec, *more = [made] if isinstance(made, ServiceSpec) else list(made)
            if settings.group_id:
                spec.group_id = settings.group_id
            if settings.concurrency:
                spec.concurrency = settings.concurrency
            if settings.window and spec.window:
                spec.window = settings.window
            if settings.max_batch and not spec.window:
                spec.max_batch = settings.max_batch
            service = StreamService(
                spec,
                kafka_settings,
                settings.instance_id,
                state=state,
                dependencies=deps,
                publisher=publisher,
            )
            extra = [
                StreamService(
                    other,
                    kafka_settings,
                    f"{settings.instance_id}-{other.name}" if settings.instance_id else None,
                    state=state,
                    dependencies=deps,
                )
                for other in more
            ]
            await run_until_signalled(service, *extra)
    finally:
        if server is not None:
            await server.cleanup()
