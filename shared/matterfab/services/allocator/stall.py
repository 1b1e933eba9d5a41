"""The stall watch: an accepted order whose progress stopped gets its missing devices again.

A broker that died hard restores a snapshot that is not a consistent cut (docs/embedded-broker.md
"Hard death"): it may keep a group's committed offset yet lose the records
before it, on any topic. When the lost records are downstream (`mfg.devices.attested`,
`mfg.images.ready`), `mfg.devices.allocated` is whole and `redrive.py`'s log watch sees
nothing wrong, but the order never completes. So the allocator also watches, in the bucket,
each unfinished order it knows of (found by listing at start, plus the orders it accepts
while running): at every idle watch (`redrive.WATCH_S`, 5 s) it lists the order's assembler
chunks `orders/<id>/ready/`, reads only the chunks it has not seen, and marks their devices
in a per-order bitmap (one byte per device). If the count of ready devices has not grown
for the order's window (`STALL_S`, env `MATTERFAB_ALLOCATOR_STALL_S`), and no other watched
order grew meanwhile either (a busy pipeline working through an earlier order is not
stalled), it re-emits `mfg.devices.allocated` for the lots holding a device missing from the
chunks, and only those, from the stored allocation chunks cut by the lot size in the order's
`claim.json`. A lot goes again whole, never in part: it is the same devices as when it was
first sent (same identities; the signer adopts the DACs in the lot's write-once `dacs.lot`,
the builder's write-once objects take identical bytes, the assembler counts devices once).
Then that order's window doubles (up to `MAX_WINDOW_S`) so a slow but healthy pipeline is
not flooded. An order with `manifest.json` is forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from matterfab.runtime import Send
from matterfab.services.allocator import allocation
from matterfab.services.allocator.order_book import OrderBook
from matterfab.services.allocator.sending import lot_emits

log = logging.getLogger(__name__)

STALL_S = 30.0  # default: an order whose count has not grown this long is re-driven
MAX_WINDOW_S = 600.0  # the window doubles after each re-drive of an order, up to this
STALL_ENV = "MATTERFAB_ALLOCATOR_STALL_S"


def stall_s_from_env() -> float:
    """`MATTERFAB_ALLOCATOR_STALL_S` (seconds, > 0), else `STALL_S` (config.AllocatorSettings)."""
    from matterfab.config import AllocatorSettings

    try:
        return AllocatorSettings().stall_s
    except ValidationError as exc:
        rule = exc.errors()[0]["type"]
        if rule == "greater_than":
            raise ValueError(f"{STALL_ENV} must be greater than 0") from None
        raise ValueError(f"{STALL_ENV} must be a number of seconds") from None


class Watched:
    """What the watch knows of one unfinished order."""

    def __init__(self, quantity: int, since: float, window: float):
        self.quantity = quantity
        self.since = since  # when the count last grew (or the watch began, or the last re-drive)
        self.window = window  # how long the count may stay flat before a re-drive
        self.ready = bytearray(quantity)  # one byte per device: 1 once it is in a chunk
        self.count = 0  # devices marked in `ready`
        self.redrives = 0
        self.chunks: set[str] = set()  # assembler chunks already read

    def mark(self, indices: Iterable[int]) -> int:
        """Mark devices ready; returns how many were new."""
        new = 0
        for i in indices:
            if 0 <= i < self.quantity and not self.ready[i]:
                self.ready[i] = 1
                new += 1
        self.count += new
        return new

    def missing(self) -> list[int]:
        """Indices of the devices in no chunk yet, ascending."""
        return [i for i in range(self.quantity) if not self.ready[i]]


class StallWatch:
    """Watches unfinished orders' ready counts and re-drives the devices of stalled ones.

    Reads the orders' objects through `book` and sends their lots through `send`.
    """

    def __init__(
        self,
        book: OrderBook,
        send: Send,
        stall_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_window_s: float = MAX_WINDOW_S,
    ):
        self.book = book
        self.send = send
        self.stall_s = stall_s_from_env() if stall_s is None else stall_s
        self.max_window_s = max(max_window_s, self.stall_s)
        self.clock = clock
        self.orders: dict[str, Watched] = {}
        self._new: set[str] = set()  # order_ids to start watching at the next check
        self._listed = False
        self.progressed_at = clock()  # when any watched order's count last grew
        self.redriven: list[tuple[str, int]] = []  # (order_id, devices re-sent) per re-drive

    def watch(self, order_id: str) -> None:
        """Watch an order (its devices were just sent): its window starts at the next check."""
        known = self.orders.get(order_id)
        if known is not None:
            known.since = self.clock()
        else:
            self._new.add(order_id)

    async def check(self) -> list[tuple[str, int]]:
        """Count every watched order; re-drive the stalled ones: (order_id, devices re-sent)."""
        if not self._listed:
            self._new.update(await self.book.unfinished())  # orders found at start
            self._listed = True
        for order_id in sorted(self._new - set(self.orders)):
            await self._add(order_id)
        self._new.clear()
        now = self.clock()
        for order_id, st in list(self.orders.items()):
            if await self.book.finished(order_id):
                del self.orders[order_id]  # completed: forget it
                continue
            if await self._count(order_id, st):
                st.since = now
                self.progressed_at = now
        done: list[tuple[str, int]] = []
        for order_id, st in list(self.orders.items()):
            if not self.stalled(st, now):
                continue
            sent = await self.redrive(order_id, st)
            st.redrives += 1
            st.since = now
            st.window = min(st.window * 2, self.max_window_s)
            done.append((order_id, sent))
        self.redriven.extend(done)
        return done

    def stalled(self, st: Watched, now: float) -> bool:
        """Whether an order's devices should be sent again."""
        if st.count >= st.quantity:
            return False  # every device is ready: the assembler writes the manifest
        if now - st.since < st.window:
            return False  # this order grew (or was sent) recently
        # Another watched order growing means the pipeline works through earlier devices.
        return now - self.progressed_at >= self.stall_s

    async def _add(self, order_id: str) -> None:
        quantity = await self.book.quantity(order_id)
        if quantity is None:
            return
        self.orders[order_id] = Watched(quantity, self.clock(), self.stall_s)

    async def _count(self, order_id: str, st: Watched) -> int:
        """Read the order's chunks not seen before; returns how many devices were new."""
        new = 0
        for chunk, indices in await self.book.ready_chunks(order_id, st.chunks):
            new += st.mark(indices)
            st.chunks.add(chunk)
        return new

    async def redrive(self, order_id: str, st: Watched) -> int:
        """Send the lots holding the order's devices in no chunk again; returns their devices."""
        missing = st.missing()
        order = await self.book.order(order_id)
        claim = await self.book.claim(order_id)
        if claim is None:  # stopped before claim.json: the start re-drive allocates the order
            log.warning("claim.json missing: not re-driven here", extra={"order_id": order_id})
            return 0
        size = claim.lot_size_of(order)
        by_chunk: dict[int, list[int]] = {}
        for i in missing:
            by_chunk.setdefault(i // allocation.CHUNK, []).append(i)
        sent = 0
        for chunk, indices in sorted(by_chunk.items()):
            devices = await self.book.chunk(order_id, chunk)
            if devices is None:  # stopped while allocating: the start re-drive allocates it
                log.warning("allocation chunk %d missing", chunk, extra={"order_id": order_id})
                continue
            messages = allocation.lot_messages(
                order, chunk, devices, size, only=indices, line_key=claim.line_key
            )
            await self.send(lot_emits(messages))
            sent += sum(len(m.devices) for m in messages)
        log.warning(
            "re-drove stalled order: %d of %d devices missing, ready count flat for %.0fs; "
            "%d devices re-sent in whole lots",
            len(missing),
            st.quantity,
            self.clock() - st.since,
            sent,
            extra={"order_id": order_id, "mf_count": len(missing)},
        )
        return sent
