"""`matterfab serve assembler`: the assembler's wiring."""

from __future__ import annotations

import asyncio

from matterfab.messages import IMAGES_READY, ImageReady
from matterfab.runtime import Context, ServiceSpec, serve
from matterfab.services.assembler.service import Assembler


async def setup(ctx: Context) -> ServiceSpec[ImageReady]:
    """Build the assembler's spec."""
    assembler = Assembler(ctx.store)
    return ServiceSpec(
        name="assembler",
        topic=IMAGES_READY,
        model=ImageReady,
        group_id="matterfab-assembler",
        handle=assembler.handle,
        on_idle=assembler.on_idle,
        concurrency=1,
        max_batch=500,
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("assembler", setup))
