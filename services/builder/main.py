"""`matterfab serve builder`: the builder's wiring."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from matterfab.messages import DEVICES_ATTESTED, DeviceAttested
from matterfab.runtime import Context, ServiceSpec, serve
from matterfab.services.builder.service import Builder


def make_executor(workers: int) -> Executor:
    """Worker processes for the CPU-heavy build (0: threads, for debugging)."""
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    # forkserver: never fork a process that already runs the event loop and client threads.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))


async def setup(ctx: Context) -> ServiceSpec[DeviceAttested]:
    """Build the builder's spec and its worker pool."""
    workers = int(os.environ.get("MATTERFAB_BUILDER_WORKERS", os.cpu_count() or 1))
    builder = Builder(ctx.store, ctx.wrapper, make_executor(workers))
    return ServiceSpec(
        name="builder",
        topic=DEVICES_ATTESTED,
        model=DeviceAttested,
        group_id="matterfab-builder",
        handle=builder.handle,
        concurrency=max(8, 4 * max(workers, 1)),
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("builder", setup))
