"""`matterfab serve signer`: the signer's wiring."""

from __future__ import annotations

import asyncio

from matterfab.messages import DEVICES_ALLOCATED, LotAllocated
from matterfab.runtime import Context, ServiceSpec, serve
from matterfab.services import registry
from matterfab.services.signer.service import Signer


async def setup(ctx: Context) -> ServiceSpec[LotAllocated]:
    """Build the signer's spec; publish its profiles' public parts first."""
    signer = Signer(ctx.store, ctx.wrapper)
    await signer.publish_profiles()
    return ServiceSpec(
        name="signer",
        topic=DEVICES_ALLOCATED,
        model=LotAllocated,
        group_id=registry.group_id("signer"),
        handle=signer.handle,
        concurrency=32,
        # A record is a lot (up to 64 devices) and a crash redelivers up to a batch: 32 lots is
        # ~700 devices at 10,000 iterations, the runtime's default of 200 would be 4,200.
        # Batches, not a window (unlike the builder): a lot's DACs are issued on the event loop
        # (in-process keys), so a batch's lots already run back to back and its end costs one
        # PUT and a commit per up to 32 lots; a window of 32 measured the same in the bench.
        max_batch=32,
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("signer", setup))
