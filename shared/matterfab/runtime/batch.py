"""The batch loop of a stream service (`runtime.BatchSpec`): fetch a batch, handle its records
(`concurrency` at once), commit, fetch the next.

A spec with a `flush` gathers records in memory and stores them in bulk: offsets are committed
only after the flush, which runs once `linger_s` passed since the last one (or on stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from matterfab import metrics

if TYPE_CHECKING:
    from matterfab.runtime.core import StreamService
    from matterfab.runtime.specs import BatchSpec

log = logging.getLogger("matterfab.runtime")

# A getmany with nothing to return gives back after this long (idle hooks, stop checks).
POLL_MS = 500


class BatchLoop:
    """One consumer's batches: handle every record of a batch, then commit it."""

    def __init__(
        self, service: StreamService[Any], consumer: AIOKafkaConsumer, spec: BatchSpec[Any]
    ):
        self.service = service
        self.consumer = consumer
        self.spec = spec
        self._uncommitted: dict[TopicPartition, int] = {}
        self._flushed_at = time.monotonic()

    def listener(self, inner: ConsumerRebalanceListener | None) -> ConsumerRebalanceListener | None:
        """The spec's own listener: a batch needs none of its own."""
        return inner

    async def run(self) -> None:
        """Handle batches until the service is asked to stop; commit what was handled."""
        service, spec = self.service, self.spec
        sem = asyncio.Semaphore(spec.concurrency)
        self._flushed_at = time.monotonic()

        async def one(record: ConsumerRecord) -> None:
            async with sem:
                emits = await service.process(record)
            # Announce each result as soon as it is made (an image is ready for stations
            # within its own build time, not the batch's); commit still waits for all.
            await service.publisher.send(emits)

        while not service.stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=spec.max_batch)
            if not batches:
                if self._uncommitted:
                    await self._flush_and_commit()
                if spec.on_idle:
                    await service.publisher.send(await service.retrying(spec.on_idle, "idle"))
                continue
            records = [r for recs in batches.values() for r in recs]
            await _all_or_none([asyncio.ensure_future(one(r)) for r in records])
            self._uncommitted.update({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
            if (
                not spec.flush
                or time.monotonic() - self._flushed_at >= spec.linger_s
                or (spec.flush_due is not None and spec.flush_due())
            ):
                await self._flush_and_commit()
            service.processed += len(records)
            metrics.BATCHES.labels(spec.name).inc()
            log.info("batch handled", extra={"mf_count": len(records)})
        if self._uncommitted:  # stopping: what was handled is made durable before we leave
            await self._flush_and_commit()

    async def _flush_and_commit(self) -> None:
        if self.spec.flush:
            emits = await self.service.retrying(self.spec.flush, "flush")
            await self.service.publisher.send(emits)
        self._flushed_at = time.monotonic()
        if self._uncommitted:
            await self.service.commit(self.consumer, dict(self._uncommitted))
            self._uncommitted.clear()


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
