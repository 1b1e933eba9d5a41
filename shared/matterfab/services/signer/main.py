"""`matterfab serve signer`: the signer's wiring."""

from __future__ import annotations

import asyncio

from matterfab.messages import DEVICES_ALLOCATED, DeviceAllocated
from matterfab.runtime import Context, ServiceSpec, serve
from matterfab.services import registry
from matterfab.services.signer.service import Signer


async def setup(ctx: Context) -> ServiceSpec[DeviceAllocated]:
    """Build the signer's spec; publish its profiles' public parts first."""
    signer = Signer(ctx.store, ctx.wrapper)
    await signer.publish_profiles()
    return ServiceSpec(
        name="signer",
        topic=DEVICES_ALLOCATED,
        model=DeviceAllocated,
        group_id=registry.group_id("signer"),
        handle=signer.handle,
        concurrency=32,
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("signer", setup))
