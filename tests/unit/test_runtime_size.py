"""The runtime stays readable (issue #23): a small core plus one module per mode, no class of
it over 250 lines, its core module at most 450 (bench/class_sizes.py measures the library)."""

from __future__ import annotations

from pathlib import Path

import matterfab.runtime
from bench.class_sizes import classes

RUNTIME = Path(matterfab.runtime.__file__).parent


def test_no_class_of_the_runtime_over_250_lines() -> None:
    found = classes(RUNTIME)
    assert any(name == "core.py:StreamService" for _, name in found)
    assert [c for c in found if c[0] > 250] == []


def test_every_runtime_module_at_most_450_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in RUNTIME.glob("*.py")}
    assert {"core.py", "batch.py", "window.py", "specs.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > 450} == {}
