"""One retry layer per call path (issue #23, docs/runtime.md "Retries"): a transient S3
failure is retried by `StoreRetry` alone, a bounded number of times. obstore's client below it
makes one request per attempt, and the runtime above it does not retry the call again: once the
store gives up, it waits for its dependencies and then handles the record once more.

The store here is obstore's real client against an HTTP endpoint that answers like an S3 store
in trouble (503 ServiceUnavailable) for as long as the test says, then like a healthy one that
has no such object (404); it counts every request that reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from aiohttp import web
from pydantic import SecretStr

from matterfab.config import S3Settings
from matterfab.errors import Unreachable
from matterfab.failures import POLICY
from matterfab.messages import ImageReady
from matterfab.runtime import BatchSpec, Emit
from matterfab.runtime.handling import Handling
from matterfab.s3 import ObjectStore

UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Endpoint:
    """An S3 endpoint failing its first `failing` requests (-1: every one) with a 503."""

    url: str = ""
    failing: int = 0
    requests: int = 0

    async def answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.failing < 0 or self.requests <= self.failing:
            return web.Response(status=503, body=UNAVAILABLE, content_type="application/xml")
        return web.Response(status=404)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ep.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ep.url = f"http://127.0.0.1:{port}"
    try:
        yield ep
    finally:
        await runner.cleanup()


def settings(url: str, deadline_s: float) -> S3Settings:
    return S3Settings(
        endpoint=url,
        access_key="k",
        secret_key=SecretStr("s"),
        bucket="b",
        retry_deadline_s=deadline_s,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.05,
    )


async def test_a_transient_failure_is_retried_once_per_attempt_by_the_store_alone(
    endpoint: Endpoint,
) -> None:
    endpoint.failing = 3
    async with ObjectStore.open(settings(endpoint.url, 10.0)) as store:
        assert await store.exists("orders/x/order.json") is False
        # 3 failures and the answer: 4 requests, each one attempt of the store's own retry
        # (with obstore's retries on, its 3 tries per attempt made it 2 attempts, 4 requests).
        assert (endpoint.requests, store._retry.attempts) == (4, 4)


async def test_a_store_away_past_its_deadline_gets_a_bounded_number_of_requests(
    endpoint: Endpoint,
) -> None:
    endpoint.failing = -1
    async with ObjectStore.open(settings(endpoint.url, 0.5)) as store:
        with pytest.raises(Unreachable, match=r"unreachable for head k after \d+ attempts"):
            await store.exists("k")
        attempts = store._retry.attempts
    assert endpoint.requests == attempts  # no hidden retries below the store
    assert 2 <= attempts <= 0.5 / 0.01 + 1  # the deadline bounds them


async def test_the_runtime_waits_for_its_dependencies_instead_of_retrying_the_store_again(
    endpoint: Endpoint,
) -> None:
    endpoint.failing = -1
    runs: list[int] = []
    waits: list[int] = []
    async with ObjectStore.open(settings(endpoint.url, 0.3)) as store:

        async def handle(msg: ImageReady) -> Sequence[Emit]:
            runs.append(endpoint.requests)
            await store.exists("orders/x/order.json")
            return []

        async def available() -> None:  # the dependencies answer again: the store is back
            waits.append(endpoint.requests)
            endpoint.failing = 0

        spec = BatchSpec(
            name="t", topic="mfg.images.ready", model=ImageReady, group_id="g", handle=handle
        )
        handling = Handling(spec, POLICY, available)
        assert await handling.retrying(lambda: handle(None), "handling") == []  # type: ignore[arg-type]
        first_run = store._retry.attempts - 1
    # One run that the store retried until its deadline, one wait, one run that succeeds: the
    # requests are the store's attempts, not attempts x runtime retries.
    assert len(runs) == 2 and len(waits) == 1
    assert runs[1] == waits[0] == first_run
    assert endpoint.requests == first_run + 1
