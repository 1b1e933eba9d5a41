"""What the allocator sends: order events, and an accepted order's lots from its order book.

Used alike by the Allocator (an order it accepts), the re-driver (an unfinished order sent
again whole) and the stall watch (the lots of a stalled order's missing devices).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from matterfab.errors import FieldError
from matterfab.messages import DEVICES_ALLOCATED, ORDER_EVENTS, ErrorItem, OrderEvent, WorkOrder
from matterfab.messages.lots import LotAllocated
from matterfab.runtime import Emit, Send
from matterfab.services.allocator import allocation
from matterfab.services.allocator.order_book import OrderBook

log = logging.getLogger(__name__)


def order_event(order_id: str, status: str, errors: Sequence[FieldError] = (), **kw: Any) -> Emit:
    """An `mfg.orders.events` record of the order."""
    event = OrderEvent(
        order_id=order_id,
        status=status,
        errors=[ErrorItem.of(e) for e in errors],
        **kw,
    )
    return Emit(ORDER_EVENTS, order_id, event)


def lot_emits(messages: Sequence[LotAllocated]) -> list[Emit]:
    """The records of some lots on `mfg.devices.allocated`, each keyed by its `lot_id`."""
    return [Emit(DEVICES_ALLOCATED, m.lot_id, m) for m in messages]


async def send_order(
    book: OrderBook, send: Send, order: WorkOrder, claim: allocation.Claim
) -> None:
    """Emit `accepted` and every lot of an accepted order, chunk by chunk.

    Each chunk as stored, or allocated now and stored write-once (a million devices never
    sit in memory at once); cut into lots by the lot size in its claim.
    """
    await send([order_event(order.order_id, "accepted", quantity=order.quantity)])
    size = claim.lot_size_of(order)
    chunks = (order.quantity + allocation.CHUNK - 1) // allocation.CHUNK
    for chunk in range(chunks):
        devices = await book.allocate(order, claim, chunk)
        lot_messages = allocation.lot_messages(order, chunk, devices, size, line_key=claim.line_key)
        await send(lot_emits(lot_messages))
    log.info("order allocated", extra={"order_id": order.order_id, "mf_quantity": order.quantity})
