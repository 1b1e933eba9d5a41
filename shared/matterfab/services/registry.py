"""Every matterfab service, declared once: what it is, what runs it, what it reads and writes.

The CLI (`serve`'s choices, `up`'s list and metrics ports), each service's consumer group, the
AsyncAPI export (who produces each topic) and the deploy tests (docker-compose.yml and
deploy/k8s are checked against this table) read it. Adding a service: a folder
`matterfab/services/<name>/` with `main.py`, one entry here, and its compose and k8s manifests
(which the tests then require). Importing this module imports no service code.
"""

from __future__ import annotations

from dataclasses import dataclass

from matterfab.topics import (
    DAC_LEDGER,
    DAC_REPLIES,
    DAC_REQUESTS,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    STATION_RESULTS,
    WORK_ORDERS,
)


@dataclass(frozen=True)
class Service:
    """One service: its name, code, topics, consumer group and metrics port."""

    name: str
    summary: str
    consumes: tuple[str, ...]  # topics read; the first is its ServiceSpec's `topic`
    # Topics it announces results on (DESIGN §3). Not listed: mfg.dead-letter, which every
    # stream service may write, and the station's re-queue of an image onto its own input.
    produces: tuple[str, ...]
    # Consumer group; None for a group-less reader. The station's is per line:
    # f"{group_id}-<line>".
    group_id: str | None
    metrics_port: int  # default Prometheus / health port (deploy/k8s/configmap.yaml agrees)
    up: bool  # whether `matterfab up` starts it locally (a station runs on the line instead)
    scaled: bool = False  # scaled by consumer-group lag (deploy/k8s/keda.yaml)

    @property
    def module(self) -> str:
        """The module whose `main()` runs the service."""
        return f"matterfab.services.{self.name}.main"

    @property
    def command(self) -> tuple[str, ...]:
        """How compose and k8s run it."""
        if self.name == "station":
            return ("matterfab", "station", "run")
        return ("matterfab", "serve", self.name)

    @property
    def metrics_port_env(self) -> str:
        """The variable that sets its metrics port."""
        if self.name == "monitor":  # the monitor's port is its page's port too
            return "MATTERFAB_MONITOR_PORT"
        return f"MATTERFAB_{self.name.upper()}_METRICS_PORT"

    @property
    def metrics_host_env(self) -> str:
        """The variable that sets the address its metrics port binds to."""
        if self.name == "monitor":
            return "MATTERFAB_MONITOR_HOST"
        return f"MATTERFAB_{self.name.upper()}_METRICS_HOST"


def _services(*services: Service) -> dict[str, Service]:
    return {s.name: s for s in services}


# In pipeline order (the order `up` starts them and `serve --help` lists them).
SERVICES: dict[str, Service] = _services(
    Service(
        name="allocator",
        summary="validates work orders, hands out one identity per device",
        consumes=(WORK_ORDERS,),
        produces=(DEVICES_ALLOCATED, ORDER_EVENTS),
        group_id="matterfab-allocator",
        metrics_port=9401,
        up=True,
    ),
    Service(
        name="signer",
        summary="issues each device's one DAC, writes the DAC ledger",
        # mfg.dac.requests and mfg.station-results: device-key DACs, by a second consumer
        # (group `dac_group_id`): CSRs in, DACs out, ledger once the station has bound them.
        consumes=(DEVICES_ALLOCATED, DAC_REQUESTS, STATION_RESULTS),
        produces=(DEVICES_ATTESTED, DAC_LEDGER, DAC_REPLIES),
        group_id="matterfab-signer",
        metrics_port=9402,
        up=True,
        scaled=True,
    ),
    Service(
        name="builder",
        summary="builds each device's partition image, onboarding codes and QR label",
        consumes=(DEVICES_ATTESTED,),
        produces=(IMAGES_READY,),
        group_id="matterfab-builder",
        metrics_port=9403,
        up=True,
        scaled=True,
    ),
    Service(
        name="assembler",
        summary="follows each order's images and station results, writes the manifest",
        consumes=(IMAGES_READY, STATION_RESULTS),
        produces=(ORDER_EVENTS,),
        group_id="matterfab-assembler",
        metrics_port=9404,
        up=True,
    ),
    Service(
        name="station",
        summary="flashes ready images on a line, reports each device",
        consumes=(IMAGES_READY, DAC_REPLIES),  # replies: group-less, to its own requests
        produces=(STATION_RESULTS, DAC_REQUESTS),
        group_id="matterfab-station",
        metrics_port=9405,
        up=False,
    ),
    Service(
        name="monitor",
        summary="follows order events and consumer-group lag: metrics and the status page",
        consumes=(ORDER_EVENTS,),
        produces=(),
        group_id=None,
        metrics_port=9400,
        up=True,
    ),
)


# The signer's second consumer group: device-key CSRs (and the station results that bind them)
# are answered apart from the lots, so a CSR never waits behind a batch of lots.
SIGNER_DAC_GROUP = "matterfab-signer-dac"


def producers(topic: str) -> list[str]:
    """Names of the services that announce results on `topic`, in pipeline order."""
    return [s.name for s in SERVICES.values() if topic in s.produces]


def consumers(topic: str) -> list[str]:
    """Names of the services that read `topic`, in pipeline order."""
    return [s.name for s in SERVICES.values() if topic in s.consumes]


def group_id(name: str) -> str:
    """The consumer group of service `name` (a group-less service has none: KeyError)."""
    group = SERVICES[name].group_id
    if group is None:
        raise KeyError(f"{name} reads without a consumer group")
    return group
