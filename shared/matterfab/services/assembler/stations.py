"""The assembler's station side: follow `mfg.station-results`, keep each order's bindings.

State and restarts: the bucket is the truth. A station records each device's *final* outcome
write-once at `orders/<id>/station/<index>.json` (a StationResult) before it publishes it, so
every final result this assembler receives is already durable there. Per order, this instance
keeps the outcomes it has seen; before it writes `bindings.csv` it lists the order's records
and fetches the ones it lacks (written by stations whose results went to another assembler
instance, or seen before a restart). A restarted assembler therefore rebuilds an order from
the bucket the first time it hears of it again.

Writes: `bindings.csv` (and `bindings-failed.csv` once a device failed for good) are mutable
objects, rewritten when outcomes changed, at most every `write_interval` seconds (longer for
big orders), and at once when the last device of the order gets its outcome: that write
happens while the last result is handled, before its offset is committed, so a crash cannot
lose it. Each write is followed by a `progress` order event with the `flashed` / `failed`
counts.

Device index (fleet/index.py): a device enters the world when it is flashed, so a final
`flashed` result is when its pointers (by serial, DAC serial, QR payload) are written, on every
delivery (write-once: a repeat is a no-op), before the bindings that report it. The device's
image is its onboarding.json in its lot's labels.lot: one GET per lot, a few lots kept per order.
This keeps the index off the build path (issue #26).

MACs: a flashed device's MAC is claimed write-once at `macs/<mac>.json` (its device_id). A
claim that finds another device, or two devices of an order with one MAC, is an error: logged
as an alarm and reported in the order's events (`errors`, field `mac`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from matterfab.bucket import keys as bucket_keys
from matterfab.bucket import objects
from matterfab.bucket.models import MacClaim
from matterfab.errors import IntegrityError, invalid
from matterfab.fleet import index as fleet_index
from matterfab.messages import ORDER_EVENTS, ErrorItem, OrderEvent, StationResult
from matterfab.messages.codec import decode
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore
from matterfab.services.assembler import bindings

log = logging.getLogger(__name__)

WRITE_INTERVAL = 2.0  # seconds between rewrites of one order's growing bindings.csv
ROWS_PER_SECOND = 5000  # big orders: at most this many rows rewritten per second on average
FETCH_CONCURRENCY = 32
LOTS_KEPT = 8  # labels.lot objects kept parsed per order for the pointers (LRU)


@dataclass
class Bindings:
    """What this instance knows of one order's station outcomes."""

    quantity: int
    outcomes: dict[int, StationResult] = field(default_factory=dict)
    claim_errors: dict[str, str] = field(default_factory=dict)  # mac -> message
    requeued: int = 0  # non-final failures seen (the image went back to the line)
    written_at: float = float("-inf")  # never written: the first write is due at once
    reported: tuple[int, int, int] = (-1, -1, -1)  # (flashed, failed, errors) last reported
    dirty: bool = False


class StationResults:
    """Aggregates station results per order into bindings objects and progress events."""

    def __init__(
        self,
        store: ObjectStore,
        ready_of: Callable[[str], int] | None = None,
        write_interval: float = WRITE_INTERVAL,
    ):
        self.store = store
        self.ready_of = ready_of or (lambda _order_id: 0)
        self.write_interval = write_interval
        self.orders: dict[str, Bindings] = {}
        self.finished: set[str] = set()
        self.built: dict[str, fleet_index.LotImages] = {}  # per unfinished order

    async def handle(self, msg: StationResult) -> list[Emit]:
        """Take in one result; write bindings and report when due."""
        if msg.order_id in self.finished:
            return []
        st = await self._state(msg.order_id)
        if not msg.final:
            st.requeued += 1
            return []
        if st.outcomes.get(msg.index) != msg:
            st.outcomes[msg.index] = msg
            st.dirty = True
        if msg.status == "flashed":
            await self._index(msg)
        if msg.status == "flashed" and msg.mac:
            # Claimed on every delivery (a no-op when repeated): a crash between the station's
            # record and this claim must not leave a MAC unchecked.
            await self._claim_mac(st, msg)
        if not st.dirty:
            return []  # a redelivery of what this instance already wrote
        if len(st.outcomes) >= st.quantity or self._due(st):
            return await self._write(msg.order_id, st)
        return []

    async def on_idle(self) -> list[Emit]:
        """Write the bindings of orders that changed since their last write."""
        emits: list[Emit] = []
        for order_id, st in list(self.orders.items()):
            if st.dirty and self._due(st):
                emits += await self._write(order_id, st)
        return emits

    def _due(self, st: Bindings) -> bool:
        interval = max(self.write_interval, len(st.outcomes) / ROWS_PER_SECOND)
        return time.monotonic() - st.written_at >= interval

    async def _state(self, order_id: str) -> Bindings:
        st = self.orders.get(order_id)
        if st is None:
            order = await objects.read_order_fields(self.store, order_id)
            if order is None or order.quantity is None:
                raise invalid("order_id", f"no order {order_id} in the bucket (order.json)")
            # dirty: an order rebuilt from the bucket is written at least once by this
            # instance, which finishes it if the previous one died before its last write.
            st = Bindings(quantity=order.quantity, dirty=True)
            await self._sync(order_id, st)
            self.orders[order_id] = st
        return st

    async def _sync(self, order_id: str, st: Bindings) -> None:
        """Add the recorded outcomes this instance has not seen."""
        listed = await self.store.list_keys(bucket_keys.station_records_prefix(order_id))
        indices = {k: bucket_keys.station_record_index(order_id, k) for k in listed}
        wanted = [k for k, i in indices.items() if i is not None and i not in st.outcomes]
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(key: str) -> StationResult:
            async with sem:
                return decode(await self.store.get(key), StationResult)

        for rec in await asyncio.gather(*(fetch(k) for k in wanted)):
            st.outcomes[rec.index] = rec

    async def _index(self, msg: StationResult) -> None:
        """Write a flashed device's pointers (its generation-0 image's, from labels.lot)."""
        built = self.built.get(msg.order_id)
        if built is None:
            built = fleet_index.LotImages(self.store, msg.order_id, max_lots=LOTS_KEPT)
            self.built[msg.order_id] = built
        try:
            image = await built.get(msg.index)
        except IntegrityError as exc:  # a damaged labels.lot must not hold up the bindings
            log.error(
                "INDEX ALARM: flashed device not indexed: %s",
                exc,
                extra={"order_id": msg.order_id, "device_id": msg.device_id},
            )
            return
        if image is None:  # built before labels.lot: `device reindex` uses its manifest
            log.warning(
                "no labels.lot record of a flashed device: not indexed (run device reindex)",
                extra={"order_id": msg.order_id, "device_id": msg.device_id},
            )
            return
        await fleet_index.record_pointers(self.store, image)

    async def _claim_mac(self, st: Bindings, msg: StationResult) -> None:
        assert msg.mac is not None
        try:
            await objects.put_mac_claim(self.store, MacClaim(mac=msg.mac, device_id=msg.device_id))
        except IntegrityError:
            held = await objects.read_mac_claim(self.store, msg.mac)
            other = held.device_id if held is not None else "?"
            text = bindings.duplicate_message(msg.mac, [other, msg.device_id])
            st.claim_errors[msg.mac] = text
            log.error(
                "DUPLICATE MAC ALARM: %s",
                text,
                extra={"order_id": msg.order_id, "device_id": msg.device_id},
            )

    def _errors(self, st: Bindings) -> list[ErrorItem]:
        found = dict(st.claim_errors)
        for mac, ids in bindings.duplicate_macs(st.outcomes.values()).items():
            found[mac] = bindings.duplicate_message(mac, ids)
        return [ErrorItem(field="mac", message=text) for _, text in sorted(found.items())]

    async def _write(self, order_id: str, st: Bindings) -> list[Emit]:
        await self._sync(order_id, st)
        st.written_at = time.monotonic()
        st.dirty = False
        outcomes = list(st.outcomes.values())
        flashed, failed = bindings.counts(outcomes)
        csv = bindings.bindings_csv(outcomes)
        await self.store.put(bucket_keys.bindings_csv(order_id), csv, "text/csv")
        if failed:
            body = bindings.failed_csv(outcomes)
            await self.store.put(bucket_keys.bindings_failed_csv(order_id), body, "text/csv")
        errors = self._errors(st)
        complete = len(outcomes) >= st.quantity
        if complete:
            self.orders.pop(order_id, None)
            self.built.pop(order_id, None)
            self.finished.add(order_id)
            log.info(
                "bindings complete",
                extra={"order_id": order_id, "mf_flashed": flashed, "mf_failed": failed},
            )
        now = (flashed, failed, len(errors))
        if now == st.reported and not complete:
            return []
        st.reported = now
        event = OrderEvent(
            order_id=order_id,
            status="progress",
            ready=self.ready_of(order_id),
            flashed=flashed,
            failed=failed,
            bound=bindings.bound(outcomes),
            quantity=st.quantity,
            errors=errors,
        )
        return [Emit(ORDER_EVENTS, order_id, event)]
