"""`matterfab serve allocator`: the allocator's wiring."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from matterfab.config import KafkaSettings
from matterfab.keywrap import KeyWrapper
from matterfab.messages import WORK_ORDERS, WorkOrder
from matterfab.runtime import BatchSpec, Context, Send, serve
from matterfab.s3 import ObjectStore
from matterfab.services import registry
from matterfab.services.allocator.order_book import LotSettings, OrderBook
from matterfab.services.allocator.redrive import CountedSend, Redriver
from matterfab.services.allocator.service import Allocator, Submission, parse_submission
from matterfab.services.allocator.stall import StallWatch

ORDER_FETCH_WAIT_MS = 250  # how long the allocator may leave a new work order waiting


@dataclass
class Parts:
    """The allocator's parts, each built from the ones before it."""

    book: OrderBook
    send: CountedSend
    stall: StallWatch
    redriver: Redriver
    allocator: Allocator


def build(
    store: ObjectStore,
    wrapper: KeyWrapper,
    kafka: KafkaSettings,
    publish: Send,
    lot_settings: LotSettings | None = None,
) -> Parts:
    """The book (the orders' objects), one send for every part (`publish`, its lots counted
    for the log watch), then the stall watch, the re-driver and the allocator."""
    book = OrderBook(store, wrapper, lot_settings)
    send = CountedSend(publish)
    stall = StallWatch(book, send)
    redriver = Redriver(book, send, kafka, stall)
    allocator = Allocator(book, send, on_sent=redriver.emitted)
    return Parts(book, send, stall, redriver, allocator)


async def setup(ctx: Context) -> BatchSpec[Submission]:
    """Build the allocator's spec from its resources."""
    # The allocator publishes an order's devices chunk by chunk while it handles the order
    # (a million devices do not fit in memory): through the runtime's own publisher.
    parts = build(ctx.store, ctx.wrapper, ctx.kafka, ctx.publisher.send)
    return BatchSpec(
        name="allocator",
        topic=WORK_ORDERS,
        model=WorkOrder,
        group_id=registry.group_id("allocator"),
        handle=parts.allocator.handle,
        decode=parse_submission,
        concurrency=1,
        max_batch=10,
        on_start=parts.redriver.on_start,
        on_idle=parts.redriver.on_idle,
        # Work orders come minutes apart and wait a quarter second at most: on the embedded
        # broker the allocator holds an empty fetch that long, not 50 ms: its idle CPU fell
        # from ~15 to ~6 ms a second, which it spent all through every order (issue #26). On
        # Kafka this is the fetch's long poll, which a new order ends at once.
        consumer_options={"fetch_max_wait_ms": ORDER_FETCH_WAIT_MS},
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("allocator", setup))
