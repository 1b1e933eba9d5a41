"""`serve`: run a stream service as a process (settings from its environment, the S3 store,
the key wrapper, metrics and /healthz, then its consume loop until SIGTERM)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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


@dataclass
class Context:
    """Resources a service's setup receives: it fetches none of them itself."""

    name: str
    settings: ServiceSettings
    kafka: KafkaSettings
    store: ObjectStore
    wrapper: KeyWrapper
    # What the service publishes with, the runtime included: for a handler that must publish
    # before it ends (see Publisher); it starts with the service, before any handler runs.
    publisher: Publisher


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
) -> None:
    """Run a stream service: config, S3, key wrapper, metrics, then the consume loop.

    `setup` may return more than one spec (the signer: lots, and device-key CSRs apart so a
    CSR never waits behind a batch of lots): the first is the service's own and takes the
    `MATTERFAB_<SERVICE>_…` knobs; each further one runs as its own consumer in its own
    group, with its own producer, in the same process, and all stop together.
    """
    from matterfab import config, logs  # late: keeps `import runtime` cheap for tests

    logs.setup(name)
    kafka.quiet_connection_logs()
    settings = service_settings(name)
    kafka_settings = config.load_kafka_settings()
    state = health.Health()
    server = await health.serve(state, settings.metrics_port, settings.metrics_host)
    try:
        async with ObjectStore.open(config.load_s3_settings()) as store:
            deps = [health.s3_dependency(store), health.kafka_dependency(kafka_settings)]
            # Setup may read the store (profiles, firmware): wait for both first.
            await health.wait_until_available(deps, state)
            publisher = Publisher(name, kafka_settings)
            wrapper = KeyWrapper(config.load_kek())
            ctx = Context(name, settings, kafka_settings, store, wrapper, publisher)
            made = await setup(ctx)
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
                kafka_settings,
                settings.instance_id,
                state=state,
                dependencies=deps,
                publisher=publisher,
            )
            extra = [
                StreamService(
                    other,
                    kafka_settings,
                    f"{settings.instance_id}-{other.name}" if settings.instance_id else None,
                    state=state,
                    dependencies=deps,
                )
                for other in more
            ]
            await run_until_signalled(service, *extra)
    finally:
        if server is not None:
            await server.cleanup()
