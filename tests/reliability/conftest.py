"""Fault-injection tests: a stack of their own, on which each module runs and kills a pipeline.

They kill services and restart the broker and the store, and the embedded broker never expires
a consumer-group member that died: on the session stack, a leftover member (a station or a
service another test stopped) could stall a group these tests rebalance, and their outages
could stall the tests after them. So this package gets its own stack, started for it and
stopped after it. Selected with `-m reliability` (they also run in the default `make test`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from matterfab.config import KafkaSettings, S3Settings
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.stacks import running_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A LocalStack for the reliability tests alone."""
    with running_stack(tmp_path_factory, "reliability-stack") as local:
        yield local


@pytest.fixture(scope="package")
def kafka_settings(stack: LocalStack) -> KafkaSettings:
    """Settings that reach this package's broker."""
    return stack.kafka_settings()


@pytest.fixture(scope="package")
def s3_settings(stack: LocalStack) -> S3Settings:
    """Settings that reach this package's store."""
    return stack.s3_settings()


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def store(s3_settings: S3Settings) -> AsyncIterator[ObjectStore]:
    """An ObjectStore on this package's bucket."""
    async with ObjectStore.open(s3_settings) as opened:
        yield opened
