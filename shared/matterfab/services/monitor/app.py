"""The monitor: follows order events, polls consumer-group lag, serves metrics and the page.

Routes (aiohttp, bound to 127.0.0.1 unless configured otherwise):
  /             the status page (HTML + a little JS, no external resources)
  /api/status   JSON: every order held with status/ready/quantity/flashed/percent, every group's
                lag, and every line's stations (live, stopped or departed, last seen, what each
                flashed in the last minutes) when the monitor can read the bucket
  /metrics      Prometheus text: consumer lag per group/topic/partition, order progress gauges
  /healthz      200 while Kafka answers, 503 (JSON naming what is down) while it does not

Not a stream processor: it commits nothing and belongs to no consumer group. Order events are
read by a group-less consumer from the beginning of `mfg.order-events`, so a restarted monitor
rebuilds its board from the log; the board is bounded (DEFAULT_CAPACITY orders).

While Kafka is away the monitor keeps serving what it last knew, retries with capped backoff
(one log line per failed attempt, one when Kafka is back) and reports not-ready on /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from matterfab import health, kafka
from matterfab.backoff import Outage
from matterfab.config import KafkaSettings
from matterfab.errors import InvalidInput, StackError
from matterfab.messages import ORDER_EVENTS, OrderEvent
from matterfab.messages.codec import decode
from matterfab.objectstore import Store
from matterfab.services import registry
from matterfab.services.monitor.board import DEFAULT_CAPACITY, FINAL, OrderBoard
from matterfab.services.monitor.lag import GroupLag, LagReader
from matterfab.services.monitor.page import PAGE
from matterfab.services.station import presence

log = logging.getLogger(__name__)

STATIONS_TIMEOUT_S = 5.0  # one reading of the stations' presence and their groups
STATIONS_KEPT_S = 86_400.0  # a station not seen for a day is no longer listed


class Monitor:
    """The monitor's state and background tasks; `app()` gives its aiohttp application."""

    def __init__(
        self,
        settings: KafkaSettings,
        refresh_s: float = 5.0,
        capacity: int = DEFAULT_CAPACITY,
        store: Store | None = None,
    ):
        self.settings = settings
        self.store = store  # for the stations' presence objects (None: no stations listed)
        self.stations: list[dict[str, Any]] = []
        self.stations_error: str | None = None
        self.refresh_s = refresh_s
        self.board = OrderBoard(capacity)
        self.reader = LagReader(settings)
        self.groups: list[GroupLag] = []
        self.lag_at: datetime | None = None
        self.lag_error: str | None = None
        self.bad_events = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS and CPU of the monitor itself
        self.registry.register(_MonitorCollector(self))
        self._tasks: list[asyncio.Task[None]] = []
        self.health = health.Health(started=True)
        where = f"Kafka at {settings.bootstrap}"
        self._lag_outage = Outage(f"{where} (lag)", log)
        self._events_outage = Outage(f"{where} ({ORDER_EVENTS})", log)

    # ---- background work -------------------------------------------------------------------

    async def start(self) -> None:
        """Start following order events and polling lag (returns at once)."""
        self._tasks = [
            asyncio.create_task(self._follow_events(), name="monitor-events"),
            asyncio.create_task(self._poll_lag(), name="monitor-lag"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks and close the Kafka clients."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.reader.close()

    async def refresh_lag(self) -> float | None:
        """Read every group's lag once; on failure keep the last reading, say why (one log
        line), mark Kafka down, and return the backoff delay before the next attempt."""
        try:
            self.groups = await self.reader.read()
        except Exception as exc:
            self.refresh_failures += 1
            self.lag_error = (
                str(exc) if isinstance(exc, StackError) else f"{type(exc).__name__}: {exc}"
            )[:300]
            self.health.down["kafka"] = self.lag_error
            return self._lag_outage.failed(self.lag_error)
        self.lag_at = datetime.now(UTC)
        self.lag_error = None
        self.refreshes += 1
        self.health.down.pop("kafka", None)
        self._lag_outage.recovered()
        return None

    async def refresh_stations(self) -> None:
        """Read every line's stations once: their presence in the bucket, and whether the
        line's group still holds them (a departed station not yet removed stalls its share);
        on failure keep the last reading and say why. Without the bucket (no S3 settings)
        the members of the station groups are listed, with status `unknown`."""
        prefix = f"{registry.group_id('station')}-"
        try:
            async with asyncio.timeout(STATIONS_TIMEOUT_S):  # never hold up the lag polling
                presences = await presence.read_presences(self.store) if self.store else []
                groups = {p.group for p in presences}
                groups |= {g.group for g in self.groups if g.group.startswith(prefix)}
                states = await self.reader.describe(sorted(groups)) if groups else {}
        except Exception as exc:
            self.stations_error = f"{type(exc).__name__}: {exc}"[:300]
            return
        self.stations = station_rows(presences, states, datetime.now(UTC))
        self.stations_error = None

    async def _poll_lag(self) -> None:
        while True:
            started = time.monotonic()
            retry_in = await self.refresh_lag()
            if retry_in is None:
                await self.refresh_stations()
            if retry_in is not None:  # Kafka away: back off (0.2 s doubling to 10 s)
                await asyncio.sleep(retry_in)
                continue
            await asyncio.sleep(max(0.5, self.refresh_s - (time.monotonic() - started)))

    async def _follow_events(self) -> None:
        while True:
            try:
                consumer = await self._events_consumer()
                self._events_outage.recovered()
                try:
                    await self._consume(consumer)
                finally:
                    await consumer.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Broker away or topic missing: try again later, the board keeps what it has.
                reason = str(exc) if isinstance(exc, StackError) else f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(self._events_outage.failed(reason[:300]))

    async def _events_consumer(self) -> AIOKafkaConsumer:
        # The board is rebuilt from the whole log: no position is kept across restarts. A
        # topic not created yet is an outage like a broker away: the caller retries.
        consumer = await kafka.topic_reader(self.settings, ORDER_EVENTS, "beginning")
        parts = len(consumer.assignment())
        log.info("following %s on %d partitions", ORDER_EVENTS, parts)
        return consumer

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for record in records:
                    try:
                        event = decode(record.value or b"", OrderEvent)
                    except InvalidInput as exc:
                        # Not ours to dead-letter (we are no consumer group); count and skip.
                        self.bad_events += 1
                        log.warning(
                            "undecodable order event at %s/%d: %s",
                            record.partition,
                            record.offset,
                            exc,
                        )
                        continue
                    self.board.apply(event)

    # ---- views -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `/api/status` returns."""
        return {
            "orders": [o.as_dict() for o in self.board.orders()],
            "groups": [g.as_dict() for g in self.groups],
            "events_seen": self.board.events_seen,
            "bad_events": self.bad_events,
            "lag_at": self.lag_at.isoformat() if self.lag_at else None,
            "lag_error": self.lag_error,
            "stations": self.stations,
            "stations_error": self.stations_error,
        }

    def app(self) -> web.Application:
        """The aiohttp application serving the page, the status API and the metrics."""
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        return app

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                # The page loads nothing from elsewhere; say so, so nothing can be injected.
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'",
            },
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status(), headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(self.health.as_dict()) + "\n",
            status=200 if self.health.ready else 503,
            content_type="application/json",
        )


def station_rows(
    presences: list[presence.StationPresence],
    groups: dict[str, kafka.GroupState],
    now: datetime,
) -> list[dict[str, Any]]:
    """One row per station of every line, by line and station id: its presence (status as of
    `now`), whether its line's group holds it, and what it flashed in the last minutes;
    members of a station group with no presence object are listed as `unknown`."""
    rows = []
    known: set[tuple[str, str]] = set()
    for p in presences:
        if (now - p.seen_at).total_seconds() > STATIONS_KEPT_S:
            continue
        state = groups.get(p.group)
        members = {m.instance_id for m in state.members} if state else set()
        known.add((p.group, p.instance_id))
        rows.append(
            {
                "line": p.line,
                "station_id": p.station_id,
                "status": p.status(now),
                "in_group": p.instance_id in members,
                "last_seen": p.seen_at.isoformat(),
                "seen_ago_s": round(max(0.0, (now - p.seen_at).total_seconds()), 1),
                "started_at": p.started_at.isoformat(),
                "flashed_recent": p.flashed_recent,
                "failed_recent": p.failed_recent,
                "recent_s": presence.RECENT_S,
                "recent": [r.model_dump(mode="json") for r in p.recent],
            }
        )
    for group, state in groups.items():
        for m in state.members:
            if m.instance_id and (group, m.instance_id) not in known:
                line = group.removeprefix(f"{registry.group_id('station')}-")
                station_id = m.instance_id.removeprefix(presence.INSTANCE_PREFIX)
                rows.append({"line": line, "station_id": station_id, "status": "unknown",
                             "in_group": True, "last_seen": None, "seen_ago_s": None,
                             "started_at": None, "flashed_recent": 0, "failed_recent": 0,
                             "recent_s": presence.RECENT_S, "recent": []})  # fmt: skip
    return sorted(rows, key=lambda r: (r["line"], r["station_id"]))


class _MonitorCollector(Collector):
    """Prometheus view of the monitor's state, built at scrape time (never stale labels)."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "matterfab_consumer_lag", "Messages a group has yet to consume", labels=labels
        )
        committed = GaugeMetricFamily(
            "matterfab_consumer_committed_offset",
            "Offset a group committed (-1: never)",
            labels=labels,
        )
        end = GaugeMetricFamily(
            "matterfab_topic_end_offset", "Log-end offset", labels=["topic", "partition"]
        )
        total = GaugeMetricFamily(
            "matterfab_group_lag", "A group's lag over all partitions", labels=["group"]
        )
        ends: dict[tuple[str, str], int] = {}
        for g in m.groups:
            total.add_metric([g.group], g.total)
            for p in g.partitions:
                key = [g.group, p.topic, str(p.partition)]
                lag.add_metric(key, p.lag)
                committed.add_metric(key, -1 if p.committed is None else p.committed)
                ends[(p.topic, str(p.partition))] = p.end
        for (topic, partition), value in sorted(ends.items()):
            end.add_metric([topic, partition], value)
        yield from (lag, committed, end, total)

        per_order = {
            name: GaugeMetricFamily(f"matterfab_order_{name}", text, labels=["order_id"])
            for name, text in (
                ("quantity", "Devices ordered"),
                ("ready", "Devices whose image is ready"),
                ("flashed", "Devices a station reported flashed"),
                ("failed", "Devices a station reported failed for good"),
                ("bound", "Flashed devices bound to their MAC"),
                ("scrapped", "Devices scrapped"),
                ("revoked", "Devices whose current DAC is revoked"),
                ("progress_ratio", "Images ready / quantity (1 once completed)"),
                ("completed", "1 once the order is completed"),
                ("open", "1 while the order is accepted and not yet completed or ended"),
                ("updated_timestamp_seconds", "When the order's last event was emitted"),
            )
        }
        for o in m.board.orders():
            per_order["quantity"].add_metric([o.order_id], o.quantity)
            per_order["ready"].add_metric([o.order_id], o.ready)
            per_order["flashed"].add_metric([o.order_id], o.flashed)
            per_order["failed"].add_metric([o.order_id], o.failed)
            per_order["bound"].add_metric([o.order_id], o.bound)
            per_order["scrapped"].add_metric([o.order_id], o.scrapped)
            per_order["revoked"].add_metric([o.order_id], o.revoked)
            per_order["progress_ratio"].add_metric([o.order_id], o.ratio)
            per_order["completed"].add_metric([o.order_id], 1 if o.status == "completed" else 0)
            per_order["open"].add_metric([o.order_id], 0 if o.status in FINAL else 1)
            if o.at is not None:
                per_order["updated_timestamp_seconds"].add_metric([o.order_id], o.at.timestamp())
        yield from per_order.values()

        yield GaugeMetricFamily(
            "matterfab_monitor_orders", "Orders the monitor holds", value=len(m.board)
        )
        yield GaugeMetricFamily(
            "matterfab_ready", "1 while /healthz answers 200, else 0", value=int(m.health.ready)
        )
        events = CounterMetricFamily("matterfab_monitor_order_events", "Order events read")
        events.add_metric([], m.board.events_seen)
        yield events
        failures = CounterMetricFamily("matterfab_monitor_lag_refresh_failures", "Failed lag reads")
        failures.add_metric([], m.refresh_failures)
        yield failures
        if m.lag_at is not None:
            yield GaugeMetricFamily(
                "matterfab_monitor_lag_timestamp_seconds",
                "When lag was last read (Unix time)",
                value=m.lag_at.timestamp(),
            )
