"""`matterfab serve builder`: the builder's wiring."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from matterfab.messages import DEVICES_ATTESTED, DeviceAttested
from matterfab.runtime import Context, ServiceSpec, serve
from matterfab.services import registry
from matterfab.services.builder.service import Builder


def _exit_with_parent() -> None:
    """Worker initializer: exit as soon as the builder process is gone, however it died.

    A SIGKILLed builder never shuts its pool down, and its workers never notice on their own:
    each holds both ends of the pool's call queue (no EOF) and they keep the forkserver and the
    resource tracker alive too. Measured: every SIGKILL of a builder leaked 4 processes. The
    parent's sentinel (a pipe the builder holds open) turns readable when it dies.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # waits on the sentinel: returns when the builder process is gone
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-builder", daemon=True).start()


def make_executor(workers: int) -> Executor:
    """Worker processes for the CPU-heavy build (0: threads, for debugging)."""
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    # forkserver: never fork a process that already runs the event loop and client threads.
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_exit_with_parent,
    )


async def setup(ctx: Context) -> ServiceSpec[DeviceAttested]:
    """Build the builder's spec and its worker pool."""
    workers = int(os.environ.get("MATTERFAB_BUILDER_WORKERS", os.cpu_count() or 1))
    builder = Builder(ctx.store, ctx.wrapper, make_executor(workers))
    # A batch's images are announced when the whole batch is done, so its size bounds how long
    # a device waits after its image is built: ~16 devices on 2 cores is ~0.15 s of work,
    # while the runtime's default of 200 made the first image of a batch wait ~1.5 s.
    max_batch = int(os.environ.get("MATTERFAB_BUILDER_MAX_BATCH", 8 * max(workers, 2)))
    return ServiceSpec(
        name="builder",
        topic=DEVICES_ATTESTED,
        model=DeviceAttested,
        group_id=registry.group_id("builder"),
        handle=builder.handle,
        concurrency=max(8, 4 * max(workers, 1)),
        max_batch=max(1, max_batch),
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("builder", setup))
