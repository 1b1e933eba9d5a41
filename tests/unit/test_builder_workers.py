"""The builder starts its worker processes before it consumes, not with the first lots."""

from __future__ import annotations

import multiprocessing

from matterfab.services.builder.main import make_executor, start_workers


async def test_every_worker_is_running_before_the_first_lot() -> None:
    before = len(multiprocessing.active_children())
    executor = make_executor(2)
    try:
        await start_workers(executor, 2)
        assert len(multiprocessing.active_children()) - before == 2
    finally:
        executor.shutdown()


async def test_threads_for_debugging_need_no_start() -> None:
    executor = make_executor(0)
    try:
        await start_workers(executor, 0)
    finally:
        executor.shutdown()
