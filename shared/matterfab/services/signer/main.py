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
        # Two lots at once, not the whole batch: each lot's DACs are issued in a thread, and 32
        # threads sharing the GIL finished the batch's first lot only when nearly all were done
        # (0.5 s into a 2,000-device order), so the builders started late. In turn, the first
        # lot is announced after its own signing time.
        concurrency=2,
        # A record is a lot (up to 64 devices) and a crash redelivers up to a batch: 32 lots is
        # ~1,900 devices at 10,000 iterations, the runtime's default of 200 would be 11,800.
        # Batches, not a window (unlike the builder): a batch's end costs one commit per up to
        # 32 lots; a window of 32 measured the same in the bench.
        max_batch=32,
        ease_when_idle=True,  # a stage of the pipeline: poll less once lots stop (specs)
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
        # A station waits on each request, but for seconds of flashing around it: the first
        # request after a quiet second may wait 0.2 s more (kafka.IDLE_PAUSE_S), and this
        # consumer's idle polling (12 partitions) was most of the signer's idle CPU.
        ease_when_idle=True,
    )
    return [lots, csrs]


def main() -> None:
    """Entry point."""
    asyncio.run(serve("signer", setup))
