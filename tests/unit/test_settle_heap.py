"""`runtime.settle_heap`: a service's startup heap frozen, the young generation's threshold set."""

from __future__ import annotations

import gc

from matterfab.runtime.serve import YOUNG_GC_THRESHOLD, settle_heap


def test_settle_heap_freezes_startup_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0  # startup's objects: out of every collection
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, before[1], before[2])
        # Collection still works for what is made afterwards: a cycle is freed.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
