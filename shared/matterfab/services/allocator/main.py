"""`matterfab serve allocator`: the allocator's wiring."""

from __future__ import annotations

import asyncio

from matterfab.messages import WORK_ORDERS, WorkOrder
from matterfab.runtime import BatchSpec, Context, serve
from matterfab.services import registry
from matterfab.services.allocator.redrive import Redriver
from matterfab.services.allocator.service import Allocator, Submission, parse_submission


async def setup(ctx: Context) -> BatchSpec[Submission]:
    """Build the allocator's spec from its resources."""
    # The allocator publishes an order's devices chunk by chunk while it handles the order
    # (a million devices do not fit in memory): through the runtime's own publisher.
    redriver = Redriver(ctx.store, ctx.kafka, ctx.publisher.send)
    allocator = Allocator(ctx.store, ctx.wrapper, redriver.send)
    redriver.attach(allocator)
    return BatchSpec(
        name="allocator",
        topic=WORK_ORDERS,
        model=WorkOrder,
        group_id=registry.group_id("allocator"),
        handle=allocator.handle,
        decode=parse_submission,
        concurrency=1,
        max_batch=10,
        on_start=redriver.on_start,
        on_idle=redriver.on_idle,
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("allocator", setup))
