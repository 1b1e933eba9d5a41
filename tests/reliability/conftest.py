"""Fault-injection tests: each module runs its own pipeline on the session stack and kills it.

Selected with `-m reliability` (they also run in the default `make test`).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the `reliability` marker (fault-injection tests on the real stack)."""
    config.addinivalue_line(
        "markers", "reliability: fault injection on the real local stack (kills, outages, poison)"
    )
