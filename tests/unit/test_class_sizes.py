"""No class in the library over 250 lines (issue #23; bench/class_sizes.py measures them)."""

from __future__ import annotations

from bench.class_sizes import LIBRARY, classes

LIMIT = 250


def test_no_class_of_the_library_over_250_lines() -> None:
    found = classes(LIBRARY)
    assert len(found) > 200  # the whole library was scanned
    over = {name: n for n, name in found if n > LIMIT}
    assert over == {}
