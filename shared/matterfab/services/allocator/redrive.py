"""Accepted orders finish by themselves, even when the broker forgets them.

The embedded broker keeps its whole state in a snapshot it rewrites about once a second (and
at a clean stop); a SIGKILL loses whatever came after the last snapshot: acknowledged records,
topic creations, committed offsets (docs/embedded-broker.md "Hard death"). The bucket is the
durable record: an order is accepted once its claim record and `order.json` are stored, and
finished once its `manifest.json` is. So the allocator re-drives unfinished orders from the
bucket (same stored allocation chunks cut by the lot size in `claim.json`, so the same
identities in the same lots;
the signer's write-once `dacs.lot` gives each device of a lot its one DAC; the builder and
assembler are idempotent, so no device counts twice):

- at start, every unfinished order whose devices the broker no longer holds: no
  `orders/<id>/emitted.json`, or a partition of `mfg.devices.allocated` now ends before the
  offset recorded there once the order's devices were sent;
- while running, when `mfg.devices.allocated` holds fewer records than this allocator has had
  acknowledged (it counts its own sends, one record per lot; only allocators write that
  topic), which is how a broker that came back from a hard death without the tail of its log
  looks;
- while running, when an unfinished order's ready count stops growing (records lost
  downstream, after `mfg.devices.allocated`): `stall.py` re-emits the lots of its missing
  devices.

`emitted.json` is a mutable hint, not state: a missing or stale one only costs a re-drive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.errors import StackError
from matterfab.messages import DEVICES_ALLOCATED
from matterfab.runtime import Emit, Send
from matterfab.services.allocator.order_book import OrderBook
from matterfab.services.allocator.sending import send_order
from matterfab.services.allocator.stall import StallWatch

log = logging.getLogger(__name__)

WATCH_S = 5.0  # how often an idle allocator compares the log with what it sent
BROKER_AWAY = (KafkaError, StackError, OSError, asyncio.TimeoutError)


class CountedSend:
    """The publisher's send, counting the records it had acknowledged on `mfg.devices.allocated`.

    Every part of the allocator sends through one of these, so the log watch knows how many
    lot records the broker must hold at least.
    """

    def __init__(self, send: Send):
        self._send = send
        self.allocated = 0  # acknowledged records (lots) on mfg.devices.allocated

    async def __call__(self, emits: Sequence[Emit]) -> None:
        """Send, then count the acknowledged records (lots) on `mfg.devices.allocated`."""
        await self._send(emits)
        self.allocated += sum(1 for e in emits if e.topic == DEVICES_ALLOCATED)


class Redriver:
    """Watches the log and the stall watch, and re-drives unfinished orders from the book."""

    def __init__(
        self, book: OrderBook, send: CountedSend, settings: KafkaSettings, stall: StallWatch
    ):
        self.book = book
        self.send = send
        self.settings = settings
        self.stall = stall
        self.expected: int | None = None  # records mfg.devices.allocated must hold at least
        self._counted = 0  # `send.allocated` already in `expected`
        self.redriven: list[str] = []  # orders re-driven by this process, in order
        self._watched_at = 0.0

    def _count_sent(self) -> None:
        """Add the records acknowledged since the last count to `expected`."""
        if self.expected is not None:
            self.expected += self.send.allocated - self._counted
        self._counted = self.send.allocated

    async def _ends(self) -> dict[int, int]:
        parts = await kafka.partitions_for(self.settings, [DEVICES_ALLOCATED])
        ends = await kafka.end_offsets(self.settings, parts)
        return {tp.partition: off for tp, off in ends.items()}

    async def emitted(self, order_id: str) -> None:
        """Record where the log ended once all of the order's devices were acknowledged."""
        self.stall.watch(order_id)
        try:
            ends = await self._ends()
        except BROKER_AWAY as exc:  # a hint only: without it the order is re-driven at start
            log.warning("could not record emitted offsets: %s", exc, extra={"order_id": order_id})
            return
        await self.book.put_emitted(order_id, DEVICES_ALLOCATED, ends)

    async def on_start(self) -> None:
        """Re-drive every unfinished order whose devices the broker no longer holds."""
        try:
            ends = await self._ends()
        except BROKER_AWAY as exc:  # the idle watch tries again
            log.warning("start check postponed: %s", exc)
            return
        self.expected = sum(ends.values())
        self._counted = self.send.allocated
        for order_id in await self.book.unfinished():
            marks = await self.book.emitted(order_id)
            if marks is None or any(ends.get(p, 0) < o for p, o in marks.items()):
                await self.redrive(order_id, "the broker no longer holds its devices")

    async def on_idle(self) -> list[Emit]:
        """Every WATCH_S: the log watch, then the stall watch (stalled orders' missing devices)."""
        now = time.monotonic()
        if now - self._watched_at < WATCH_S:
            return []
        self._watched_at = now
        await self._watch_log()
        await self.stall.check()
        return []

    async def _watch_log(self) -> None:
        if self.expected is None:
            await self.on_start()
            return
        try:
            held = sum((await self._ends()).values())
        except BROKER_AWAY as exc:  # look again later
            log.info("log watch skipped: %s", exc)
            return
        self._count_sent()
        assert self.expected is not None
        if held >= self.expected:
            self.expected = held  # other allocators' devices, or ours re-sent by a restarted broker
            return
        log.warning(
            "mfg.devices.allocated holds %d records, %d were acknowledged: the broker lost "
            "records; re-driving unfinished orders",
            held,
            self.expected,
        )
        self.expected = held
        for order_id in await self.book.unfinished():
            await self.redrive(order_id, "the broker lost records")

    async def redrive(self, order_id: str, why: str) -> None:
        """Send the order's devices again from its stored allocation."""
        order = await self.book.order(order_id)
        claim = await self.book.claim(order_id)
        if claim is None:  # stopped between its claim record and claim.json: the record decides
            claim = await self.book.settle_claim(order, await self.book.claim_record(order))
        log.warning("re-driving order: %s", why, extra={"order_id": order_id})
        self.redriven.append(order_id)
        await send_order(self.book, self.send, order, claim)
        await self.emitted(order_id)
