"""The whole pipeline running against the session stack, with a test attestation profile."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from matterfab.stack import LocalStack
from tests.pipeline import Services, matterfab

PROFILE = "e2e-fff1"
# The allocator's lot size cap for these orders: at 10,000 iterations the default sizing makes
# lots of 59, so an order of 100 would be two lots, both perhaps on one builder's partitions;
# at 20 it is five, shared by the two builders, and a 29-device order is two lots.
LOT_MAX_DEVICES = 20


def wait_until_joined(stack: LocalStack, group: str, members: int, timeout: float = 180) -> None:
    """Until `group` is Stable with `members` members (`matterfab lag` lists them). A builder
    that joins after the first order arrived rebalances the group mid-order: its lots come
    again and every station result of them twice (measured under load: the first e2e test's
    one-result-per-device check failed on the code before issue #27 as well)."""
    deadline = time.monotonic() + timeout
    seen: object = None
    while time.monotonic() < deadline:
        done = matterfab(stack, "lag", "--group", group, "--json")
        if done.returncode == 0:
            [doc] = json.loads(done.stdout)["groups"]
            seen = (doc.get("state"), len(doc.get("members", [])))
            if seen == ("Stable", members):
                return
        time.sleep(0.5)
    raise AssertionError(f"{group} never had {members} members, Stable: last {seen}")


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
    services.start("allocator", MATTERFAB_LOT_MAX_DEVICES=str(LOT_MAX_DEVICES))
    for name in ("signer", "assembler"):
        services.start(name)
    services.start("builder", 1)
    services.start("builder", 2)
    try:
        wait_until_joined(stack, "matterfab-builder", 2)
        yield services
    finally:
        services.stop_all()
