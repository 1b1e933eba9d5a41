"""`matterfab serve assembler`: the assembler's wiring."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from matterfab.messages import IMAGES_READY, STATION_RESULTS, ImageReady, StationResult
from matterfab.runtime import BatchSpec, Context, Emit, Route, serve
from matterfab.services import registry
from matterfab.services.assembler.service import LINGER_S, Assembler
from matterfab.services.assembler.stations import StationResults


async def setup(ctx: Context) -> BatchSpec[ImageReady]:
    """Build the assembler's spec."""
    assembler = Assembler(ctx.store)
    stations = StationResults(ctx.store, assembler.ready_of)

    async def on_idle() -> Sequence[Emit]:
        return [*await assembler.on_idle(), *await stations.on_idle()]

    return BatchSpec(
        name="assembler",
        topic=IMAGES_READY,
        model=ImageReady,
        group_id=registry.group_id("assembler"),
        handle=assembler.handle,
        on_idle=on_idle,
        flush=assembler.flush,
        linger_s=LINGER_S,
        flush_due=assembler.completes_an_order,
        concurrency=1,
        max_batch=500,
        routes={STATION_RESULTS: Route(StationResult, stations.handle)},
        ease_when_idle=True,  # a stage of the pipeline: poll less once images stop (specs)
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("assembler", setup))
