"""`serve`: run a stream service as a process (settings from its environment, the S3 store,
the key wrapper, metrics and /healthz, then its consume loop until SIGTERM). Every service
runs through it, the station included: `Needs` says what a process takes beyond Kafka and the
store (a station never has the key-encryption key)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab import health, kafka
from matterfab.config import KafkaSettings
from matterfab.keywrap import KeyWrapper
from matterfab.runtime.core import StreamService, run_until_signalled
from matterfab.runtime.publisher import Publisher
from matterfab.runtime.specs import BatchSpec, ServiceSpec, WindowSpec
from matterfab.s3 import ObjectStore


class ServiceSettings(BaseSettings):
    """Knobs of every stream service (env `MATTERFAB_<SERVICE>_…`, e.g. `…_CONCURRENCY`)."""

    model_config = SettingsConfigDict(extra="ignore")

    group_id: str | None = None
    instance_id: str | None = None  # static group membership: unique per running instance
    concurrency: int | None = None
    # Records in flight, for a service that runs a window (the builder); a batch service
    # (`BatchSpec`) ignores it.
    window: int | None = Field(default=None, ge=1)
    # Records per batch of a batch service (fewer: smaller commits, more often); a windowed
    # service ignores it.
    max_batch: int | None = Field(default=None, ge=1)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class Needs:
    """What a process takes from `serve` beyond Kafka and the object store."""

    # The key-encryption key (MATTERFAB_KEK…): the pipeline services unwrap and wrap keys with
    # it; a station is never given it.
    kek: bool = True
    # Setup reads the store (profiles, firmware): wait for Kafka and the store before it. A
    # station's setup reads only local files (its line keys), so a wrong key stops it at once;
    # its consumer waits for them as every service's does.
    ready_before_setup: bool = True


PIPELINE = Needs()


@dataclass
class Context:
    """Resources a service's setup receives: it fetches none of them itself."""

    name: str
    settings: ServiceSettings
    kafka: KafkaSettings
    store: ObjectStore
    _wrapper: KeyWrapper | None
    # What the service publishes with, the runtime included: for a handler that must publish
    # before it ends (see Publisher); it starts with the service, before any handler runs.
    publisher: Publisher
    # The process's health (/healthz): `ready` once its dependencies answer.
    health: health.Health = field(default_factory=health.Health)
    # What setup starts beside the service (tasks, clients): unwound once the services have
    # stopped, last in first out, before the store closes.
    cleanup: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def wrapper(self) -> KeyWrapper:
        """The key wrapper over the KEK (only for a service whose `Needs` has `kek`)."""
        if self._wrapper is None:
            raise RuntimeError(f"{self.name} is served without the key-encryption key")
        return self._wrapper


def service_settings(name: str) -> ServiceSettings:
    """The settings of service `name` from its environment variables."""
    cls = type(
        f"{name.title()}Settings",
        (ServiceSettings,),
        {
            "model_config": SettingsConfigDict(
                env_prefix=f"MATTERFAB_{name.upper()}_", extra="ignore"
            )
        },
    )
    return cls()


async def serve(
    name: str,
    setup: Callable[[Context], Awaitable[ServiceSpec[Any] | Sequence[ServiceSpec[Any]]]],
    needs: Needs = PIPELINE,
    settings: ServiceSettings | None = None,
    kafka_settings: KafkaSettings | None = None,
) -> None:
    """Run a stream service: config, S3, key wrapper, metrics, then the consume loop.

    `setup` may return more than one spec (the signer: lots, and device-key CSRs apart so a
    CSR never waits behind a batch of lots): the first is the service's own and takes the
    `MATTERFAB_<SERVICE>_…` knobs; each further one runs as its own consumer in its own
    group, with its own producer, in the same process, and all stop together.

    `settings` and `kafka_settings` default to the environment's; a process with settings of
    its own (the station: its id is its instance id and names its Kafka client) passes them.
    """
    from matterfab import config, logs  # late: keeps `import runtime` cheap for tests

    logs.setup(name)
    kafka.quiet_connection_logs()
    settings = settings or service_settings(name)
    kafka_settings = kafka_settings or config.load_kafka_settings()
    state = health.Health()
    server = await health.serve(state, settings.metrics_port, settings.metrics_host)
    try:
        async with ObjectStore.open(config.load_s3_settings()) as store:
            deps = [health.s3_dependency(store), health.kafka_dependency(kafka_settings)]
            if needs.ready_before_setup:
                await health.wait_until_available(deps, state)
            publisher = Publisher(name, kafka_settings)
            wrapper = KeyWrapper(config.load_kek()) if needs.kek else None
            ctx = Context(name, settings, kafka_settings, store, wrapper, publisher, state)
            async with ctx.cleanup:
                made = await setup(ctx)
                await _run(ctx, made, deps)
    finally:
        if server is not None:
            await server.cleanup()


async def _run(
    ctx: Context,
    made: ServiceSpec[Any] | Sequence[ServiceSpec[Any]],
    deps: list[health.Dependency],
) -> None:
    """The specs `setup` made, each a StreamService, until SIGTERM or SIGINT."""
    settings = ctx.settings
    spec, *more = [made] if isinstance(made, BatchSpec | WindowSpec) else list(made)
    if settings.group_id:
        spec.group_id = settings.group_id
    if isinstance(spec, WindowSpec):
        spec.window = settings.window or spec.window
    else:
        spec.concurrency = settings.concurrency or spec.concurrency
        spec.max_batch = settings.max_batch or spec.max_batch
    service = StreamService(
        spec,
        ctx.kafka,
        settings.instance_id,
        state=ctx.health,
        dependencies=deps,
        publisher=ctx.publisher,
    )
    extra = [
        StreamService(
            other,
            ctx.kafka,
            f"{settings.instance_id}-{other.name}" if settings.instance_id else None,
            state=ctx.health,
            dependencies=deps,
        )
        for other in more
    ]
    settle_heap()
    await run_until_signalled(service, *extra)


YOUNG_GC_THRESHOLD = 10_000  # net allocations between young collections; CPython's default: 700


def settle_heap() -> None:
    """Before the first record: move what startup made (modules, pydantic schemas, clients) out
    of the garbage collector's sight (`gc.freeze()`, as CPython's docs advise for long-lived
    processes), and collect the young generation after YOUNG_GC_THRESHOLD net allocations,
    not 700.

    Measured with gc.callbacks over 2,000-device orders (issue #26): a full collection walked
    every object startup left, ~40 ms in the builder, several times an order (11 % of its event
    loop's CPU); after the freeze, the young collections still cost the four services 0.03 ms
    CPU a device, and with the higher threshold ~0.003, because what a record allocates is
    freed by reference counting long before 10,000 objects pile up. Frozen objects are never
    freed, which for what a service keeps all its life changes nothing.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)
