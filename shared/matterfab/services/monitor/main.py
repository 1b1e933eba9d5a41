"""`matterfab serve monitor`: the monitor's HTTP server (status page, `/api/status`, `/metrics`).

Settings (env): `MATTERFAB_MONITOR_HOST` (default 127.0.0.1; 0.0.0.0 in a container),
`MATTERFAB_MONITOR_PORT` (default 9400), `MATTERFAB_MONITOR_REFRESH_S` (lag poll interval,
default 5), `MATTERFAB_MONITOR_MAX_ORDERS` (orders kept in memory, default 1000).
With S3 settings (read access is enough) it also lists each line's stations from their presence
objects (docs/stations.md); without, only the members of the station groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab.config import KafkaSettings
from matterfab.objectstore import Store
from matterfab.services.monitor.app import Monitor
from matterfab.services.monitor.board import DEFAULT_CAPACITY

log = logging.getLogger(__name__)


class MonitorSettings(BaseSettings):
    """Where the monitor listens and how often it reads lag (env `MATTERFAB_MONITOR_…`)."""

    model_config = SettingsConfigDict(env_prefix="MATTERFAB_MONITOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65535)
    refresh_s: float = Field(5.0, gt=0)
    max_orders: int = Field(DEFAULT_CAPACITY, ge=1)


async def run(settings: MonitorSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    from matterfab import config
    from matterfab.errors import StackError
    from matterfab.s3 import ObjectStore

    kafka_settings = config.load_kafka_settings()
    async with contextlib.AsyncExitStack() as resources:
        # The bucket holds the stations' presence: listed when the monitor can read it.
        store = None
        try:
            store = await resources.enter_async_context(ObjectStore.open(config.load_s3_settings()))
        except StackError as exc:
            log.warning("no S3 store (%s): the stations of each line are not listed", exc)
        await _serve(settings, kafka_settings, store)


async def _serve(
    settings: MonitorSettings, kafka_settings: KafkaSettings, store: Store | None
) -> None:
    from matterfab import health

    monitor = Monitor(kafka_settings, settings.refresh_s, settings.max_orders, store)
    runner = web.AppRunner(monitor.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    # The page is up at once (503 on /healthz); Kafka away: wait; Kafka refusing us: stop.
    await health.wait_until_available([health.kafka_dependency(kafka_settings)], monitor.health)
    await monitor.start()
    log.info("monitor serving on http://%s:%d/", settings.host, settings.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await monitor.stop()
        await runner.cleanup()


def main() -> None:
    """Entry point."""
    from matterfab import kafka, logs

    logs.setup("monitor")
    kafka.quiet_connection_logs()
    asyncio.run(run(MonitorSettings()))
