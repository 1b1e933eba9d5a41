"""`matterfab station run` / `matterfab serve station`: a station's wiring.

A station needs Kafka and read access to the images (plus write access to the per-device
outcome records), never the key-encryption key: it runs through `runtime.serve` like every
service, with `STATION_NEEDS` (no KEK; its setup reads only local files, so a wrong line key
stops it before it waits for anything).

Group membership is static (KIP-345, `group_instance_id` = the station id): a station that
crashes or reboots and comes back takes its partitions back at once, and finds the image it was
flashing uncommitted. (Dynamic membership would not help on the embedded broker, which never
evicts a dead dynamic member either: a killed dynamic consumer blocks its whole group.)
Stations come and go without stalling the line:

- a station that stops cleanly leaves the group (LeaveGroup with its instance id): the others
  take its partitions at once, and it takes a share back when it returns under its own id;
- a station that departs without leaving (SIGKILL, power cut, PC swapped) is removed from the
  group by the others, or by the next station to start, once its presence in the bucket has
  not moved for `presence.LEASE_S` (`presence.py`); on Apache Kafka the broker also expires
  it after `session.timeout.ms` (SESSION_TIMEOUT_MS, 10 s), whichever comes first.

Takeover bound: 30 s on both stacks (`presence.TAKEOVER_BOUND_S`; docs/operations.md "Stations
coming and going"). A station that cannot join says which group and what it waits for
(`runtime.join_stalled_message`), never that a Kafka which answers is unreachable.

A station waits for Kafka and the S3 store like every service (`matterfab.health`): it starts
once both answer, rides out their outages with backoff (one log line per attempt, one when they
are back, `/healthz` 503 meanwhile), and stops at start-up only on what no wait fixes
(credentials refused, bucket missing), with that one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from matterfab import config, health, lines, metrics
from matterfab.messages import IMAGES_READY, ImageReady, StationResult
from matterfab.runtime import BatchSpec, Context, Emit, Needs, ServiceSettings, serve
from matterfab.services.station import device_key, presence, printing
from matterfab.services.station.config import StationSettings, load_settings
from matterfab.services.station.device_key import DacExchange
from matterfab.services.station.sealed import SealedImages
from matterfab.services.station.service import Station, make_flasher

log = logging.getLogger(__name__)


class _LogAssignment(ConsumerRebalanceListener):
    """Logs the partitions this station serves after every rebalance."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to do: results are published before offsets are committed."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Log the new share of the line's images."""
        parts = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        log.info("partitions assigned", extra={"mf_partitions": parts})


# The session timeout Apache Kafka expires a departed static member after (aiokafka's default,
# set here so the documented bound does not move with a library upgrade); ≤ 30 s by the issue.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000
STOPPED_WRITE_S = 5.0  # at most this long to say `stopped` in the presence on a clean stop


def spec_for(station: Station, seen: presence.Presence | None = None) -> BatchSpec[ImageReady]:
    """The station's stream spec: the line's group on `mfg.images.ready`; its line keys are
    checked before the consumer joins (a wrong key stops it having consumed nothing)."""
    s = station.settings
    counted_handle = counted(station)

    async def check_keys() -> None:
        await station.sealed.check(station.store)

    async def handle(msg: ImageReady) -> list[Emit]:
        emits = await counted_handle(msg)
        if seen is not None:
            seen.record([e.message for e in emits if isinstance(e.message, StationResult)])
        return emits

    return BatchSpec(
        name="station",
        topic=IMAGES_READY,
        model=ImageReady,
        group_id=s.group_id,
        group_label=f"line {s.line}",
        handle=handle,
        concurrency=s.concurrency,
        max_batch=s.batch,
        # One batch may take every attempt of every image in it: never let the broker think
        # the station died while it is flashing.
        consumer_options={
            "max_poll_interval_ms": int(max(300.0, s.batch * s.worst_case_s) * 1000),
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        },
        listener=_LogAssignment(),
        leave_on_stop=True,  # the others take its partitions at once (see above)
        on_start=check_keys,
    )


def counted(station: Station) -> Callable[[ImageReady], Awaitable[list[Emit]]]:
    """The station's handler, counting the results it publishes (alerts: failure rate)."""

    async def handle(msg: ImageReady) -> list[Emit]:
        emits = await station.handle(msg)
        for emit in emits:
            if isinstance(emit.message, StationResult):
                r = emit.message
                metrics.STATION_RESULTS.labels(r.line, r.status, str(r.final).lower()).inc()
        return emits

    return handle


def instance_id(settings: StationSettings) -> str:
    """The station's static group membership id."""
    return presence.instance_id(settings.station_id)


# No KEK, ever; the line keys are checked before the consumer joins (`spec_for`).
STATION_NEEDS = Needs(kek=False, ready_before_setup=False)


async def run(settings: StationSettings) -> None:
    """Run one station until SIGTERM or SIGINT."""
    # The client id names the station in the broker's view of the group (`describe groups`).
    kafka_settings = config.load_kafka_settings().model_copy(
        update={"client_id": f"matterfab-station-{settings.station_id}"}
    )
    # Its own settings (MATTERFAB_STATION_*), not the pipeline services' knobs: built, not read.
    knobs = ServiceSettings.model_construct(
        instance_id=instance_id(settings),
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
    )

    async def setup(ctx: Context) -> BatchSpec[ImageReady]:
        return await station_setup(settings, ctx)

    await serve("station", setup, STATION_NEEDS, knobs, kafka_settings)


async def station_setup(settings: StationSettings, ctx: Context) -> BatchSpec[ImageReady]:
    """The station's parts, its presence kept beside it, and its spec."""
    store = ctx.store
    line_keys = lines.LineKeys.load(settings.line, settings.line_key, config.state_dir())
    sealed = SealedImages(settings.line, line_keys)
    labels = printing.from_settings(settings, store)
    # device-key orders: CSRs go out through the station's own publisher.
    exchange = DacExchange(ctx.kafka, ctx.publisher.send, settings.station_id)
    ctx.cleanup.push_async_callback(exchange.stop)
    keys = device_key.for_station(settings, store, exchange)
    station = Station(
        settings,
        store,
        make_flasher(settings),
        printing=labels,
        device_keys=keys,
        sealed=sealed,
    )
    seen = presence.Presence(store, settings.station_id, settings.line, settings.group_id)
    sweeper = presence.Sweeper(
        store, ctx.kafka, settings.line, settings.group_id, instance_id(settings)
    )
    await ctx.cleanup.enter_async_context(kept_present(ctx.health, seen, sweeper))
    return spec_for(station, seen)


@contextlib.asynccontextmanager
async def kept_present(
    state: health.Health, seen: presence.Presence, sweeper: presence.Sweeper
) -> AsyncIterator[None]:
    """The station's presence written and its group swept while the block runs; on a clean
    stop (the services stopped, having left the group) say `stopped`."""

    async def beat_while_ready() -> None:
        # Only a station whose dependencies answer writes its presence; one that cannot start,
        # or waits out an outage, says why in its own lines, not in presence warnings too.
        while True:
            if state.ready:
                await seen.write()
            await asyncio.sleep(presence.HEARTBEAT_S)

    tasks = [
        asyncio.create_task(beat_while_ready(), name="station-presence"),
        asyncio.create_task(sweeper.run(), name="station-sweeper"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if not seen.beats:
        return  # never present (it never started): nothing to take back
    with contextlib.suppress(TimeoutError):  # a store away must not hold up the stop
        async with asyncio.timeout(STOPPED_WRITE_S):
            await seen.write("stopped")


def main() -> None:
    """Entry point of `matterfab serve station` (settings from MATTERFAB_STATION_* only)."""
    asyncio.run(run(load_settings()))
