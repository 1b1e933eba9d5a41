"""Readiness of a long-running process, and how it waits for Kafka and the S3 store.

A service, a station or the monitor never exits because a dependency is away: it waits with
capped exponential backoff (`matterfab.backoff`), logs one line per failed attempt and one
summary when the dependency is back, and answers `/healthz` with 503 (naming what is down)
until then. What no wait fixes — credentials refused, a bucket or topic missing, an untrusted
certificate — ends the process at start-up with that one line (exit 1): a deployment to fix.

`/healthz` and `/metrics` share the process's metrics port (`MATTERFAB_<SERVICE>_METRICS_PORT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from matterfab.backoff import Outage
from matterfab.config import KafkaSettings
from matterfab.errors import DependencyError
from matterfab.metrics import READY
from matterfab.s3 import ObjectStore

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 5.0  # how often a healthy dependency is probed

Check = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Dependency:
    """A dependency to probe: its name (`kafka`, `s3`), where it is, and the probe."""

    name: str
    where: str  # "Kafka at host:9092" — what log lines and /healthz name
    check: Check


def kafka_dependency(settings: KafkaSettings) -> Dependency:
    """Kafka, probed with one metadata round trip."""
    from matterfab import kafka  # late: health stays importable without the Kafka client

    return Dependency(
        "kafka", f"Kafka at {settings.bootstrap}", lambda: kafka.check_broker(settings)
    )


def s3_dependency(store: ObjectStore) -> Dependency:
    """The S3 store and bucket, probed with one listing (no retries: the caller backs off)."""
    return Dependency("s3", store.where(), lambda: store.check(deadline_s=0))


@dataclass
class Health:
    """Which dependencies are down (name -> reason); ready when none is."""

    down: dict[str, str] = field(default_factory=dict)
    started: bool = False  # set once the process has started its work

    @property
    def ready(self) -> bool:
        """Whether the process can do its work now."""
        return self.started and not self.down

    def as_dict(self) -> dict[str, object]:
        """The /healthz body."""
        return {"ready": self.ready, "started": self.started, "down": dict(self.down)}


async def probe(dep: Dependency, outage: Outage, health: Health) -> float | None:
    """Probe once; None when it answered, else the delay before the next attempt.

    Raises the dependency's error when it is not transient (refused, missing).
    """
    try:
        await dep.check()
    except DependencyError as exc:
        if not exc.transient:
            health.down[dep.name] = str(exc)
            raise
        health.down[dep.name] = str(exc)
        return outage.failed(str(exc))
    except Exception as exc:  # an unexpected answer: report it, keep waiting
        reason = f"{type(exc).__name__}: {exc}"[:300]
        health.down[dep.name] = reason
        return outage.failed(reason)
    health.down.pop(dep.name, None)
    outage.recovered()
    return None


async def wait_until_available(deps: list[Dependency], health: Health) -> None:
    """Return once every dependency answers; wait out the unreachable ones with backoff."""
    for dep in deps:
        outage = Outage(dep.where, log)
        while True:
            delay = await probe(dep, outage, health)
            if delay is None:
                break
            await asyncio.sleep(delay)


async def watch(deps: list[Dependency], health: Health) -> None:
    """Probe every dependency for the life of the process (cancel to stop).

    Healthy ones every WATCH_INTERVAL_S; a failing one on its own backoff, one log line per
    attempt, and one line when it is back. Never raises: the process carries on (its own
    retries hold the work) and /healthz says what is down.
    """
    outages = {dep.name: Outage(dep.where, log) for dep in deps}
    due = dict.fromkeys(outages, 0.0)
    while True:
        now = time.monotonic()
        for dep in deps:
            if due[dep.name] > now:
                continue
            try:
                delay = await probe(dep, outages[dep.name], health)
            except DependencyError as exc:  # refused mid-run: say it, keep probing
                delay = outages[dep.name].failed(str(exc))
            due[dep.name] = time.monotonic() + (WATCH_INTERVAL_S if delay is None else delay)
        await asyncio.sleep(max(0.05, min(due.values()) - time.monotonic()))


@contextlib.asynccontextmanager
async def watching(deps: list[Dependency], health: Health) -> AsyncIterator[asyncio.Task[None]]:
    """Run `watch` in the background for the duration of the block."""
    task = asyncio.create_task(watch(deps, health), name="dependency-watch")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def routes(app: web.Application, health: Health) -> None:
    """Add `/healthz` (200 ready, 503 not, JSON naming what is down) to an aiohttp app."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(health.as_dict()) + "\n",
            status=200 if health.ready else 503,
            content_type="application/json",
        )

    app.router.add_get("/healthz", healthz)


async def serve(health: Health, port: int, host: str = "127.0.0.1") -> web.AppRunner | None:
    """Serve `/metrics` (the process's Prometheus registry) and `/healthz` (0: do not serve)."""
    if not port:
        return None
    READY.set_function(lambda: 1.0 if health.ready else 0.0)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    routes(app, health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
