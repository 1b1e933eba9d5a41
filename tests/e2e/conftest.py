"""The whole pipeline running against the session stack, with a test attestation profile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from matterfab.stack import LocalStack
from tests.pipeline import Services, matterfab

PROFILE = "e2e-fff1"


@pytest.fixture(scope="session")
def profile(stack: LocalStack) -> str:
    """A test attestation profile (VID 0xFFF1, PID 0x8000) made by `matterfab pki init-test`."""
    done = matterfab(
        stack, "pki", "init-test", "--vid", "0xFFF1", "--pid", "0x8000", "--name", PROFILE
    )
    assert done.returncode == 0, done.stderr
    return PROFILE


@pytest.fixture(scope="session")
def pipeline(stack: LocalStack, profile: str) -> Iterator[Services]:
    """allocator, signer, two builders and assembler, running until the session ends."""
    services = Services(stack)
    for name in ("allocator", "signer", "assembler"):
        services.start(name)
    services.start("builder", 1)
    services.start("builder", 2)
    try:
        yield services
    finally:
        services.stop_all()
