"""The core of a stream service: client lifecycle (start in order, stop in reverse), waiting
for and watching its dependencies, and what it does on a permanent fault; the records
themselves go through the mode's loop (`batch`, `window`) and `handling`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from matterfab import health, kafka, metrics
from matterfab.backoff import Backoff
from matterfab.config import KafkaSettings
from matterfab.errors import JoinStalled, StackError, Unreachable
from matterfab.failures import POLICY, FailurePolicy, PermanentFault
from matterfab.runtime.batch import BatchLoop
from matterfab.runtime.handling import Handling
from matterfab.runtime.publisher import Emit, Publisher
from matterfab.runtime.specs import ServiceSpec, WindowSpec
from matterfab.runtime.window import WindowLoop

log = logging.getLogger("matterfab.runtime")
T = TypeVar("T")


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
        self._mode: BatchLoop | WindowLoop | None = None  # the consumer's loop; new per consumer
        self.publisher = publisher or Publisher(spec.name, settings)
        self.stopping = asyncio.Event()
        # Decoding, the handler under the failure policy, dead letters: what each loop calls.
        self.handling = Handling(spec, policy, self.available)
        self.processed = 0

    def stop(self) -> None:
        """Ask the loop to finish its current batch (or the records in flight) and stop."""
        self.stopping.set()

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
        await self.stopping.wait()

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
        windowed = isinstance(spec, WindowSpec)
        self.consumer = consumer = kafka.consumer(
            self.settings,
            *([] if spec.listener or windowed else topics),
            group_id=spec.group_id,
            max_poll_records=spec.max_poll_records,
            **static,
            **spec.consumer_options,
        )
        # Bookkeeping per consumer: a restarted one starts from the committed offsets.
        self._mode = (
            WindowLoop(self, consumer, spec.window)
            if isinstance(spec, WindowSpec)
            else BatchLoop(self, consumer, spec)
        )
        listener = self._mode.listener(spec.listener)
        if listener:
            consumer.subscribe(topics, listener=listener)
        try:
            await kafka.start(consumer, self.settings, "consumer")
        except Unreachable as exc:
            raise await self._join_problem(exc) from exc
        if spec.ease_when_idle and self.settings.embedded:
            kafka.ease_when_idle(consumer)

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
        stopper = asyncio.ensure_future(self.stopping.wait())
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
        assert self._mode is not None
        await self._mode.run()

    async def process(self, record: ConsumerRecord) -> list[Emit]:
        """Handle one record (see `Handling.process`): its emits, or its dead letter."""
        return await self.handling.process(record)

    async def retrying(self, fn: Callable[[], Awaitable[Sequence[Emit]]], what: str) -> list[Emit]:
        """Run a hook (flush, idle) under the failure policy (see `Handling.retrying`)."""
        return await self.handling.retrying(fn, what)

    async def _leave_group(self) -> None:
        """On a clean stop, leave the group even as a static member (see kafka.leave_group)."""
        if not self.spec.leave_on_stop or not self.instance_id or self.consumer is None:
            return
        try:
            await kafka.leave_group(self.consumer, self.spec.group_id)
        except KafkaError as exc:  # best effort, as aiokafka's own leave
            log.warning("%s: LeaveGroup failed: %s", self.spec.name, exc)

    async def commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
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
