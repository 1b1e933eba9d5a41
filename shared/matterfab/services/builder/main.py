"""`matterfab serve builder`: the builder's wiring."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab.messages import DEVICES_ATTESTED, LotAttested
from matterfab.runtime import Context, WindowSpec, serve
from matterfab.services import registry
from matterfab.services.builder.service import Builder


class BuilderSettings(BaseSettings):
    """The builder's worker pool (env `MATTERFAB_BUILDER_WORKERS`)."""

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_BUILDER_", extra="ignore", env_ignore_empty=True
    )

    # Worker processes building images (0: threads, for debugging); default one per CPU.
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0)


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


def _started() -> None:
    """A worker's first task: freeze its heap, which holds the build code the initializer
    imported, so full collections during builds skip it (as `runtime.settle_heap`; the
    collector's thresholds stay CPython's here, as in the core the bench compares with)."""
    gc.collect()
    gc.freeze()


async def start_workers(executor: Executor, workers: int) -> None:
    """Start every worker process now, not when the first lots arrive.

    The pool starts a worker only when a task finds none idle, so `workers` tasks at once start
    them all (and the forkserver before them). Started by the first lots instead, they made
    those lots wait 1-2 s (paced bench), which alone put a run's p99 latency above 1 s.
    """
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(executor, _started) for _ in range(workers)))


async def setup(ctx: Context) -> WindowSpec[LotAttested]:
    """Build the builder's spec and its worker pool (its workers started)."""
    workers = BuilderSettings().workers
    executor = make_executor(workers)
    await start_workers(executor, workers)
    builder = Builder(ctx.store, ctx.wrapper, executor)
    # A record is a lot: one worker task of ~0.25 s (lots.TARGET_S), then its PUTs in one round
    # and its images announced. The runtime keeps `window` lots in flight (a sliding window,
    # not batches) and takes the next one the moment a lot is done: one lot per worker, plus
    # one waiting in the pool's queue, so a worker that finishes starts the next lot at once
    # while the event loop stores and announces the last one. A lot that arrives while every
    # worker is busy waits only for the lots ahead of it to reach a worker: under capacity,
    # at most about one lot's time (~0.25 s), so its images are ready ~0.25-0.5 s after its
    # LotAttested (the p99 < 1 s target). With batches of one lot per worker it also waited
    # for the batch's slower lot, its PUTs and the commit, and the workers idled through that
    # tail. MATTERFAB_BUILDER_WINDOW overrides (runtime.ServiceSettings).
    slots = workers if workers > 0 else os.cpu_count() or 1  # lots built at once
    return WindowSpec(
        name="builder",
        topic=DEVICES_ATTESTED,
        model=LotAttested,
        group_id=registry.group_id("builder"),
        handle=builder.handle,
        window=slots + 1,
        ease_when_idle=True,  # a stage of the pipeline: poll less once lots stop (runtime specs)
    )


def main() -> None:
    """Entry point."""
    asyncio.run(serve("builder", setup))
