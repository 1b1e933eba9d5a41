"""The sliding-window loop of a stream service (`runtime.WindowSpec`).

Up to `window` records in flight at all times, the next one taken as soon as one is done, each
partition committed up to its first record not done (`matterfab.watermarks`). For records
that take long and unevenly (the builder's lots), where a batch holds every slot until its
slowest record is done and a record that arrives meanwhile waits for the whole batch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from matterfab import metrics
from matterfab.watermarks import Taken, Watermarks

if TYPE_CHECKING:
    from matterfab.runtime.core import StreamService

log = logging.getLogger("matterfab.runtime")

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


class WindowLoop:
    """One consumer's window: keep up to `window` records in flight; commit each partition's
    done prefix. Made per consumer (a restarted one starts from the committed offsets).

    Whenever a slot is free the loop takes what the consumer has already fetched, at once,
    and if slots are still free it waits for more in the background (one getmany at a time,
    for at most the free slots). Each record is handled and its emits published as soon as it
    is done, as in a batch. Commits come from `marks`, so never past a record not done: every
    COMMIT_INTERVAL_S while records are in flight, at once when none is and nothing waits to
    be taken, and last on a clean stop, which takes no more records and waits for those in
    flight. A failure that escapes a record's handling, or a consumer that breaks (KafkaError:
    the service starts a new one), ends the loop: the records in flight are cancelled first
    (uncommitted, they come again), never left running against clients about to stop.

    Records a background getmany got before a rebalance took partitions away are dropped, not
    taken: the rebalance forgot those partitions' bookkeeping (`_HandOver`), and taking them
    would start it again above records still in flight. The new assignment starts every
    partition at its committed offset, so they come again (here or to the new owner).
    """

    def __init__(self, service: StreamService[Any], consumer: AIOKafkaConsumer, window: int):
        self.service = service
        self.consumer = consumer
        self.window = window
        self.marks: Watermarks[TopicPartition] = Watermarks()
        self.revocations = 0  # rebalances that took partitions away
        # One commit at a time: the periodic commit and a rebalance's hand-over each compute
        # what to commit under it, so a late commit never moves an offset back.
        self._commit_lock = asyncio.Lock()
        self._tasks: dict[asyncio.Task[None], Taken[TopicPartition]] = {}
        self._committed_at = time.monotonic()
        self._handled = 0  # records done since the last commit

    def listener(self, inner: ConsumerRebalanceListener | None) -> ConsumerRebalanceListener:
        """The rebalance listener that hands over what is done, around the spec's own."""
        return _HandOver(self, inner)

    async def run(self) -> None:
        """Handle records until the service is asked to stop, then commit what is done."""
        service, tasks = self.service, self._tasks
        fetch: asyncio.Task[_Fetched] | None = None  # the background getmany, if any
        stop = asyncio.ensure_future(service.stopping.wait())
        self._committed_at = time.monotonic()
        try:
            while True:
                stopping = service.stopping.is_set()
                if stopping and not tasks:
                    break
                idle = False
                if not stopping and fetch is None and len(tasks) < self.window:
                    self._take(await self._fetch(self.window - len(tasks), 0))
                    idle = not tasks
                    if len(tasks) < self.window:
                        fetch = asyncio.create_task(self._fetch(self.window - len(tasks), POLL_MS))
                if self.marks.committable() and (
                    idle or time.monotonic() - self._committed_at >= COMMIT_INTERVAL_S
                ):
                    await self._commit()
                if idle and service.spec.on_idle:
                    await service.publisher.send(
                        await service.retrying(service.spec.on_idle, "idle")
                    )
                waiting: set[asyncio.Future[Any]] = set(tasks)
                if not stopping:
                    waiting |= {stop, *([fetch] if fetch else [])}
                timeout = None
                if self.marks.committable():
                    timeout = max(0.0, self._committed_at + COMMIT_INTERVAL_S - time.monotonic())
                finished, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in [t for t in finished if t in tasks]:
                    taken = tasks.pop(task)
                    task.result()  # a failure that escaped `process` ends the loop, as a batch's
                    self.marks.done(taken)
                    self._handled += 1
                    service.processed += 1
                if fetch is not None and fetch.done() and not service.stopping.is_set():
                    fetched, fetch = fetch.result(), None  # KafkaError: the consumer broke
                    self._take(fetched)
            await self._commit()  # stopping: everything taken is done; commit it before we leave
        finally:
            stop.cancel()
            left = [t for t in (fetch, *tasks) if t is not None]
            for task in left:
                task.cancel()  # a no-op for those done; gather collects their outcomes too
            await asyncio.gather(*left, return_exceptions=True)

    def _take(self, fetched: _Fetched) -> None:
        """Start a task per record fetched, unless a rebalance came since (they come again)."""
        revocations, batches = fetched
        if revocations != self.revocations:
            return
        for tp, records in batches.items():
            for record in records:
                task = asyncio.create_task(self._handle_and_send(record))
                self._tasks[task] = self.marks.take(tp, record.offset)

    async def _commit(self) -> None:
        """Commit what is done; count what was handled since the last commit as a batch."""
        self._committed_at = time.monotonic()
        await self.commit_done()
        if self._handled:
            metrics.BATCHES.labels(self.service.spec.name).inc()
            log.info("batch handled", extra={"mf_count": self._handled})
            self._handled = 0

    async def _fetch(self, most: int, wait_ms: int) -> _Fetched:
        """Up to `most` records (waiting up to `wait_ms` for some), with the rebalances seen."""
        batches = await self.consumer.getmany(timeout_ms=wait_ms, max_records=most)
        # No await between getmany handing the records over and this count: it is exact.
        return self.revocations, batches

    async def _handle_and_send(self, record: ConsumerRecord) -> None:
        """One record: handle it, then publish what it emits at once."""
        await self.service.publisher.send(await self.service.process(record))

    async def commit_done(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit what is done of the partitions (all, or these) still assigned."""
        async with self._commit_lock:
            assigned = self.consumer.assignment()
            ready = {
                tp: m for tp, m in self.marks.committable(partitions).items() if tp in assigned
            }
            offsets = {tp: m.offset for tp, m in ready.items()}
            if ready and await self.service.commit(self.consumer, offsets):
                self.marks.committed(ready)


class _HandOver(ConsumerRebalanceListener):
    """A window's rebalance listener, around the spec's own (if any).

    On a revocation it commits what is done of the partitions leaving (bounded: a rebalance
    waits for it) and forgets their bookkeeping; records of theirs still in flight finish and
    publish, but count for nothing (they come again to the partition's next owner). Bumping
    `revocations` first tells the window to drop records fetched before now.
    """

    def __init__(self, loop: WindowLoop, inner: ConsumerRebalanceListener | None):
        self.loop = loop
        self.inner = inner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is done of `revoked`, forget them, then tell the spec's listener."""
        self.loop.revocations += 1
        try:
            async with asyncio.timeout(HAND_OVER_TIMEOUT_S):
                await self.loop.commit_done(set(revoked))
        except TimeoutError:
            log.warning(
                "%s: no commit of the revoked partitions in %.0fs; their records come again",
                self.loop.service.spec.name,
                HAND_OVER_TIMEOUT_S,
            )
        finally:
            self.loop.marks.forget(revoked)
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do here (a new assignment starts at the committed offsets); pass it on."""
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_assigned(assigned))


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
