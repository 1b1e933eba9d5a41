"""The allocator's OrderBook on the in-memory bucket, and the parts that use it.

The book is the one place that reads and writes an order's objects (order.json, claim.json,
allocation chunks, emitted.json, the assembler's ready chunks and manifest.json); the
re-driver and the stall watch see the book and a send, never the Allocator.
"""

from __future__ import annotations

import ast
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matterfab import catalogue
from matterfab.keywrap import KeyWrapper
from matterfab.messages import DEVICES_ALLOCATED, ORDER_EVENTS
from matterfab.messages.base import order_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.allocator import allocation, redrive, sending
from matterfab.services.allocator.order_book import LotSettings, OrderBook
from matterfab.services.allocator.redrive import CountedSend
from matterfab.services.allocator.service import Allocator, parse_submission
from tests.sealed import register_line

VID, PID = 0xFFF1, 0x8000
ALLOCATOR = Path(allocation.__file__).parent


class Rig:
    """An allocator and its book on a memory bucket; its sends recorded."""

    def __init__(self, lot_devices: int = 4) -> None:
        self.store = MemoryObjectStore()
        register_line(self.store)
        self.sent: list[Emit] = []

        async def send(emits: Sequence[Emit]) -> None:
            self.sent.extend(emits)

        self.send = send
        self.wrapper = KeyWrapper(os.urandom(32))
        self.book = OrderBook(self.store, self.wrapper, LotSettings(max_devices=lot_devices))  # type: ignore[arg-type]
        self.allocator = Allocator(self.book, send)

    async def accept(self, order_id: str, quantity: int, product_id: int = PID) -> None:
        name = f"book-{product_id:04x}"
        summary = {"name": name, "vendor_id": VID, "product_id": product_id}
        await catalogue.publish(self.store, summary)  # type: ignore[arg-type]
        doc: dict[str, Any] = {
            "type": "work-order/v1",
            "order_id": order_id,
            "product": {"vendor_id": VID, "product_id": product_id},
            "quantity": quantity,
            "mfg_date": "2026-11-29",
            "attestation_profile": name,
            "commissioning": {"iteration_count": 1000},
        }
        assert await self.allocator.handle(parse_submission(json.dumps(doc).encode())) == []


async def test_unfinished_orders_are_listed_in_claim_order_across_products() -> None:
    rig = Rig()
    await rig.accept("B-1", 2)
    await rig.accept("B-2", 2, product_id=0x8001)
    await rig.accept("B-3", 2)
    await rig.accept("B-4", 2)
    await rig.store.put_once(order_key("B-3", "manifest.json"), b"{}", "application/json")
    assert await rig.book.unfinished() == ["B-1", "B-4", "B-2"]  # 8000's chain, then 8001's
    assert await rig.book.finished("B-3") and not await rig.book.finished("B-1")
    # A claim record without order.json (stopped between the two, or rejected meanwhile).
    order = parse_submission(rig.store.objects[order_key("B-1", "order.json")]).order
    assert order is not None
    other = order.model_copy(update={"order_id": "B-5"})
    await rig.book.claims.claim(other, "0" * 64)
    assert "B-5" not in await rig.book.unfinished()
    # Another book on the bucket (a restarted allocator) sees the same.
    fresh = OrderBook(rig.store, rig.wrapper, LotSettings())  # type: ignore[arg-type]
    assert await fresh.unfinished() == ["B-1", "B-4", "B-2"]


async def test_a_lost_claim_json_is_settled_again_from_the_claim_record() -> None:
    rig = Rig(lot_devices=3)
    await rig.accept("C-1", 7)
    stored = await rig.book.claim("C-1")
    assert stored is not None and stored.lot_size == 3 and stored.line_key
    order = await rig.book.order("C-1")
    del rig.store.objects[order_key("C-1", "claim.json")]  # stopped before claim.json
    assert await rig.book.claim("C-1") is None
    record = await rig.book.claim_record(order)
    assert await rig.book.settle_claim(order, record) == stored
    # Once stored, claim.json stands: other lot settings never re-cut the order.
    other = OrderBook(rig.store, rig.wrapper, LotSettings(max_devices=5))  # type: ignore[arg-type]
    assert await other.settle_claim(order, record) == stored


async def test_chunks_are_allocated_once_and_read_back() -> None:
    rig = Rig()
    await rig.accept("A-1", allocation.CHUNK + 2)
    order = await rig.book.order("A-1")
    claim = await rig.book.claim("A-1")
    assert claim is not None
    first = await rig.book.chunk("A-1", 1)
    assert first is not None and [d["index"] for d in first] == [1000, 1001]
    assert await rig.book.allocate(order, claim, 1) == first  # stored: not drawn again
    assert await rig.book.chunk("A-1", 2) is None
    assert await rig.book.quantity("A-1") == allocation.CHUNK + 2
    assert await rig.book.quantity("A-9") is None


async def test_ready_chunks_not_seen_are_read_with_their_device_indices() -> None:
    rig = Rig()
    await rig.accept("R-1", 5)
    names = []
    for indices in ([0, 1], [3]):
        key = order_key("R-1", f"ready/{uuid.uuid4().hex}.json")
        body = {"order_id": "R-1", "records": [{"index": i} for i in indices]}
        await rig.store.put_once(key, json.dumps(body).encode(), "application/json")
        names.append(key)
    got = dict(await rig.book.ready_chunks("R-1", set()))
    assert got == {names[0]: [0, 1], names[1]: [3]}
    before = rig.store.requests
    assert await rig.book.ready_chunks("R-1", set(names)) == []
    assert rig.store.requests - before == 1  # one LIST, no chunk read again


async def test_emitted_marks_round_trip() -> None:
    rig = Rig()
    assert await rig.book.emitted("E-1") is None
    await rig.book.put_emitted("E-1", DEVICES_ALLOCATED, {0: 7, 3: 12})
    assert await rig.book.emitted("E-1") == {0: 7, 3: 12}
    await rig.book.put_emitted("E-1", DEVICES_ALLOCATED, {0: 9})  # a hint: overwritten
    assert await rig.book.emitted("E-1") == {0: 9}


async def test_counted_send_counts_the_acknowledged_lots_only() -> None:
    rig = Rig(lot_devices=2)
    counted = CountedSend(rig.send)
    await rig.accept("S-1", 5)
    order = await rig.book.order("S-1")
    claim = await rig.book.claim("S-1")
    assert claim is not None
    rig.sent.clear()
    await sending.send_order(rig.book, counted, order, claim)
    topics = [e.topic for e in rig.sent]
    assert topics == [ORDER_EVENTS, DEVICES_ALLOCATED, DEVICES_ALLOCATED, DEVICES_ALLOCATED]
    assert counted.allocated == 3  # lots of 2, 2 and 1 devices; the event is not counted


def test_the_redriver_and_the_stall_watch_never_see_the_allocator() -> None:
    for name in ("redrive.py", "stall.py", "order_book.py", "sending.py"):
        tree = ast.parse((ALLOCATOR / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        assert "matterfab.services.allocator.service" not in imported, name
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "Allocator" not in names, name
    assert not hasattr(redrive.Redriver, "attach")
