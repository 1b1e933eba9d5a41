"""A LocalStack on free ports in a temporary folder, for fixtures of any scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from matterfab.stack import LocalStack, StackPorts
from tests.sealed import STATES


@contextmanager
def running_stack(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[LocalStack]:
    """Start a stack (bucket created, topics applied); stop it by PID afterwards."""
    local = LocalStack(tmp_path_factory.mktemp(name), ports=StackPorts.free())
    local.start()
    STATES.append(local.home)  # its line keys open sealed objects in test helpers
    try:
        yield local
    finally:
        local.stop()
