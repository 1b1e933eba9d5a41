"""`matterfab serve signer`: the signer's wiring."""

from __future__ import annotations

import asyncio
from typing import Any

from matterfab.messages import (
    DAC_REQUESTS,
    DEVICES_ALLOCATED,
    STATION_RESULTS,
    DacRequest,
    LotAllocated,
    StationResult,
)
from matterfab.runtime import BatchSpec, Context, Route, ServiceSpec, WindowSpec, serve
from matterfab.services import registry
from matterfab.services.signer.dac_requests import DeviceKeyIssuer
from matterfab.services.signer.service import Signer


async def setup(ctx: Context) -> list[ServiceSpec[Any]]:
    """Build the signer's specs (lots; device-key CSRs); publish its profiles' public parts."""
    signer = Signer(ctx.store, ctx.wrapper)
    await signer.publish_profiles()
    issuer = DeviceKeyIssuer(signer)
    lots = BatchSpec(
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
    # Device-key CSRs wait on a station: their own group, so they never queue behind lots, and
    # a sliding window, so a request is taken as soon as it arrives instead of waiting for the
    # batch before it to end. Requests in flight together are signed together
    # (dac_requests.BatchSigner).
    csrs = WindowSpec(
        name="signer-dac",
        topic=DAC_REQUESTS,
        model=DacRequest,
        group_id=registry.SIGNER_DAC_GROUP,
        handle=issuer.handle_request,
        routes={STATION_RESULTS: Route(StationResult, issuer.handle_result)},
        window=64,
    )
    return [lots, csrs]


def main() -> None:
    """Entry point."""
    asyncio.run(serve("signer", setup))
