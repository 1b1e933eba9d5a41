"""Session fixtures: a real local stack (broker + S3) on free ports, started only when asked.

The stack lives in a temporary folder with ports of its own, so tests never touch, nor collide
with, a stack that `make up` started. It is stopped by PID at the end of the session.

The state folder is `$MATTERFAB_HOME`, else `./.matterfab` (issue #23): the session sets
MATTERFAB_HOME to an empty folder, so a test that runs from the checkout never finds a
developer's running stack there; tests that use a stack name it (its `home`) explicitly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from matterfab.config import KafkaSettings, S3Settings
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.stacks import running_stack

# Each test folder is a marker, so a developer can run one kind alone (`make unit`,
# `pytest -m e2e`); `make test` runs them all.
SUITES = ("unit", "conformance", "integration", "e2e", "reliability")


_NO_STACK: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """No stack by default: MATTERFAB_HOME is an empty folder of this session's own."""
    _NO_STACK.append(tempfile.mkdtemp(prefix="matterfab-tests-no-stack-"))
    os.environ["MATTERFAB_HOME"] = _NO_STACK[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's empty state folder."""
    for folder in _NO_STACK:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the folder it lives in (tests/<suite>/...)."""
    for item in items:
        parts = item.path.parts
        for suite in SUITES:
            if "tests" in parts and suite in parts[parts.index("tests") :]:
                item.add_marker(getattr(pytest.mark, suite))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A running LocalStack (bucket created, topics applied) shared by the session."""
    with running_stack(tmp_path_factory, "stack") as local:
        yield local


@pytest.fixture(scope="session")
def kafka_settings(stack: LocalStack) -> KafkaSettings:
    """Settings that reach the session stack's broker."""
    return stack.kafka_settings()


@pytest.fixture(scope="session")
def s3_settings(stack: LocalStack) -> S3Settings:
    """Settings that reach the session stack's S3 store."""
    return stack.s3_settings()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def store(s3_settings: S3Settings) -> AsyncIterator[ObjectStore]:
    """An ObjectStore on the session stack's bucket."""
    async with ObjectStore.open(s3_settings) as opened:
        yield opened
