"""The allocator's stall watch on the in-memory store, with an injected clock.

It re-sends only the lots holding a device missing from the assembler's chunks, whole and as
first sent (from the stored allocation, cut by the lot size in claim.json), once an order's
ready count stayed flat for the window; then it backs off. Complete, finished and progressing
orders are left alone.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from matterfab import catalogue
from matterfab.keywrap import KeyWrapper
from matterfab.messages import DEVICES_ALLOCATED, LotAllocated
from matterfab.messages.base import order_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.allocator import allocation, stall
from matterfab.services.allocator.order_book import LotSettings, OrderBook
from matterfab.services.allocator.service import Allocator, parse_submission
from matterfab.services.allocator.stall import StallWatch
from tests.sealed import register_line

VID, PID = 0xFFF1, 0x8000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """An allocator on a memory bucket, its sends recorded, and a stall watch on a fake clock."""

    def __init__(
        self, stall_s: float = 30.0, max_window_s: float = 600.0, lot_devices: int = 1
    ) -> None:
        self.store = MemoryObjectStore()
        register_line(self.store)  # as `matterfab up` does: orders go to line local
        self.sent: list[Emit] = []
        self.first: dict[str, list[LotAllocated]] = {}  # the lots each order was first sent in

        async def send(emits: Sequence[Emit]) -> None:
            self.sent.extend(emits)

        # One device a lot unless asked: the watch's counting is seen device by device.
        lot_settings = LotSettings(max_devices=lot_devices)
        self.book = OrderBook(self.store, KeyWrapper(os.urandom(32)), lot_settings)
        self.allocator = Allocator(self.book, send)
        self.clock = Clock()
        self.watch = StallWatch(
            self.book,
            send,
            stall_s=stall_s,
            clock=self.clock,
            max_window_s=max_window_s,
        )

    async def accept(self, order_id: str, quantity: int) -> None:
        await catalogue.publish(self.store, {"name": "stall", "vendor_id": VID, "product_id": PID})
        doc: dict[str, Any] = {
            "type": "work-order/v1",
            "order_id": order_id,
            "product": {"vendor_id": VID, "product_id": PID},
            "quantity": quantity,
            "mfg_date": "2026-11-29",
            "attestation_profile": "stall",
            "commissioning": {"iteration_count": 1000},
        }
        assert await self.allocator.handle(parse_submission(json.dumps(doc).encode())) == []
        self.watch.watch(order_id)
        self.first[order_id] = self.resent_lots()

    async def ready(self, order_id: str, *indices: int) -> None:
        """An assembler chunk holding these devices."""
        body = {"order_id": order_id, "records": [{"index": i} for i in indices]}
        key = order_key(order_id, f"ready/{uuid.uuid4().hex}.json")
        await self.store.put_once(key, json.dumps(body).encode(), "application/json")

    async def at(self, t: float) -> list[tuple[str, int]]:
        """Advance the clock to `t` seconds after the start and run one check."""
        self.clock.now = 1000.0 + t
        return await self.watch.check()

    def resent_lots(self) -> list[LotAllocated]:
        emits = [e for e in self.sent if e.topic == DEVICES_ALLOCATED]
        self.sent.clear()
        out = [e.message for e in emits if isinstance(e.message, LotAllocated)]
        assert [e.key for e in emits] == [m.lot_id for m in out]  # a record a lot, by lot_id
        return out

    def resent(self) -> list[Any]:
        """The devices re-sent (DeviceAllocated views of the lots)."""
        return [d for lot in self.resent_lots() for d in lot.identities()]


async def test_a_stalled_order_gets_only_its_missing_devices_with_the_stored_identities() -> None:
    rig = Rig()
    await rig.accept("ST-1", 5)
    stored = json.loads(await rig.store.get(order_key("ST-1", "allocation/00000.json")))
    await rig.ready("ST-1", 0, 1)
    await rig.ready("ST-1", 1, 3)  # a device in two chunks counts once
    assert await rig.at(0) == []
    assert await rig.at(29) == []
    assert rig.watch.orders["ST-1"].count == 3
    assert await rig.at(30) == [("ST-1", 2)]
    resent = rig.resent()
    assert [m.index for m in resent] == [2, 4]
    for m in resent:
        assert m.serial_num == stored[m.index]["serial_num"]
        assert m.passcode == stored[m.index]["passcode"]
        assert m.salt_b64 == stored[m.index]["salt_b64"]
        assert m.device_id == f"ST-1/{m.index:07d}"


async def test_the_window_doubles_after_each_redrive_up_to_the_cap() -> None:
    rig = Rig(stall_s=30, max_window_s=100)
    await rig.accept("ST-2", 3)
    times = []
    t = 0.0
    while t <= 500:
        if await rig.at(t):
            times.append(t)
        t += 5
    # 30 s flat, then 60 s, then 100 s (capped), 100 s, ...
    assert times == [30, 90, 190, 290, 390, 490]
    assert rig.watch.orders["ST-2"].redrives == 6
    assert len(rig.resent()) == 3 * 6


async def test_a_progressing_order_is_not_redriven() -> None:
    rig = Rig()
    await rig.accept("ST-3", 10)
    for step in range(10):  # one device every 20 s: slow, but never 30 s flat
        await rig.ready("ST-3", step)
        assert await rig.at(step * 20) == []
    assert rig.resent() == []


async def test_another_order_progressing_holds_a_flat_one_back() -> None:
    rig = Rig()
    await rig.accept("ST-A", 2)  # its devices were lost downstream
    await rig.accept("ST-B", 20)  # the pipeline works through this one meanwhile
    for step in range(10):
        await rig.ready("ST-B", step)
        assert await rig.at(step * 10) == []
    # ST-B then stalls too: 30 s after the last growth both are re-driven.
    assert await rig.at(110) == []
    assert sorted(await rig.at(120)) == [("ST-A", 2), ("ST-B", 10)]


async def test_complete_and_finished_orders_are_not_redriven_and_finished_ones_forgotten() -> None:
    rig = Rig()
    await rig.accept("ST-4", 2)
    await rig.accept("ST-5", 2)
    await rig.ready("ST-4", 0, 1)  # every device ready, the manifest not written yet
    await rig.store.put_once(order_key("ST-5", "manifest.json"), b"{}", "application/json")
    assert await rig.at(0) == []
    assert set(rig.watch.orders) == {"ST-4"}
    assert await rig.at(300) == []
    assert rig.resent() == []
    await rig.store.put_once(order_key("ST-4", "manifest.json"), b"{}", "application/json")
    await rig.at(305)
    assert rig.watch.orders == {}


async def test_orders_found_at_start_are_watched_and_chunks_are_read_once() -> None:
    rig = Rig()
    await rig.accept("ST-6", 4)
    rig.watch.orders.clear()  # a restarted allocator: it knows the order from the listing only
    rig.watch._new.clear()
    rig.watch._listed = False  # it lists the bucket's unfinished orders at its next check
    await rig.ready("ST-6", 0)
    assert await rig.at(0) == []
    assert "ST-6" in rig.watch.orders
    gets = rig.store.requests
    await rig.at(5)
    assert rig.store.requests - gets == 2  # manifest.json exists? + one LIST: no chunk re-read
    assert await rig.at(30) == [("ST-6", 3)]
    assert [m.index for m in rig.resent()] == [1, 2, 3]


async def test_resending_the_order_restarts_its_window() -> None:
    rig = Rig()
    await rig.accept("ST-7", 2)
    assert await rig.at(0) == []
    rig.clock.now = 1025.0
    rig.watch.watch("ST-7")  # the log watch re-drove the whole order just now
    assert await rig.at(30) == []
    assert await rig.at(55) == [("ST-7", 2)]


async def test_a_stalled_order_gets_whole_lots_again_as_first_sent() -> None:
    rig = Rig(lot_devices=3)
    await rig.accept("ST-L", 8)
    first = rig.first["ST-L"]
    assert [[d.index for d in lot.devices] for lot in first] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    await rig.ready("ST-L", 0, 1, 2, 3, 5, 6)  # 4 and 7 lost downstream
    assert await rig.at(0) == []
    assert await rig.at(30) == [("ST-L", 5)]  # the lots of 4 and of 7, whole
    again = rig.resent_lots()
    assert [lot.model_dump() for lot in again] == [first[1].model_dump(), first[2].model_dump()]


async def test_lots_of_a_redrive_never_straddle_an_allocation_chunk() -> None:
    rig = Rig(lot_devices=64)
    quantity = allocation.CHUNK + 5
    await rig.accept("ST-C", quantity)
    first = rig.first["ST-C"]
    bounds = [(lot.devices[0].index, lot.devices[-1].index) for lot in first]
    assert bounds[-2:] == [(960, 999), (1000, 1004)]  # the chunk's last lot is short
    await rig.ready("ST-C", *(i for i in range(quantity) if i not in (999, 1000)))
    assert await rig.at(0) == []
    assert await rig.at(30) == [("ST-C", 40 + 5)]
    assert [lot.model_dump() for lot in rig.resent_lots()] == [
        first[-2].model_dump(),
        first[-1].model_dump(),
    ]


async def test_an_order_accepted_before_lots_is_redriven_in_default_lots() -> None:
    rig = Rig(lot_devices=2)
    await rig.accept("ST-O", 5)
    key = order_key("ST-O", "claim.json")
    claim = json.loads(await rig.store.get(key))
    del claim["lot_size"]  # a claim.json written before lots
    rig.store.objects[key] = json.dumps(claim).encode()
    await rig.ready("ST-O", 0)
    assert await rig.at(0) == []
    assert await rig.at(30) == [("ST-O", 5)]  # one default lot (256 at 1,000 iterations)
    assert [[d.index for d in lot.devices] for lot in rig.resent_lots()] == [[0, 1, 2, 3, 4]]


def test_stall_s_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stall.STALL_ENV, raising=False)
    assert stall.stall_s_from_env() == stall.STALL_S
    monkeypatch.setenv(stall.STALL_ENV, "7.5")
    assert stall.stall_s_from_env() == 7.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(stall.STALL_ENV, bad)
        with pytest.raises(ValueError, match=stall.STALL_ENV):
            stall.stall_s_from_env()
