"""The local stack's two servers: the embedded broker (noida-db) and the S3 store (`weed mini`).

Each starts its binary under the stack's Supervisor, with its data under `home/data/<name>`,
and waits until it answers. Both bind 127.0.0.1 only; the store runs with credentials (without
them it is open to anyone), no automatic buckets, and telemetry off (DESIGN §7).
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from matterfab.errors import StackError
from matterfab.localstack import binaries
from matterfab.localstack.ports import HOST, StackPorts, port_in_use
from matterfab.localstack.processes import Supervisor, child_env

KAFKA = "kafka"
S3 = "s3"
STOP_TIMEOUT_S = {KAFKA: 30.0, S3: 15.0}


@dataclass(frozen=True)
class S3Tls:
    """Serve the local S3 store over HTTPS: its certificate and key, and the CA that signed it
    (what clients of this stack trust through MATTERFAB_S3_CA_BUNDLE)."""

    cert: Path
    key: Path
    ca: Path


PORT_FREE_S = 10.0  # how long a start waits for a just-stopped server's port


class Broker:
    """The embedded Kafka-compatible broker: `noida-db start --only kafka` on 127.0.0.1."""

    def __init__(self, supervisor: Supervisor, ports: StackPorts):
        """A broker on `ports.kafka`, its data under the supervisor's home."""
        self.supervisor = supervisor
        self.ports = ports

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"{HOST}:{self.ports.kafka}"

    def start(self) -> None:
        """Start the broker unless it runs; StackError if its port is taken or it fails."""
        if self.supervisor.live_pid(KAFKA) is not None:
            return
        # A broker stopped a moment ago may hold its port until it has fully exited.
        deadline = time.monotonic() + PORT_FREE_S
        while port_in_use(self.ports.kafka) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_in_use(self.ports.kafka):
            raise StackError(
                f"port {self.ports.kafka} is already in use: "
                "set MATTERFAB_KAFKA_PORT to a free port"
            )
        data = self.supervisor.home / "data" / "kafka"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binaries.broker_binary()),
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.ports.kafka),
            "--host",
            HOST,
            "--data-dir",
            str(data),
        ]
        self.supervisor.spawn(KAFKA, argv, child_env(), data)
        self.supervisor.wait_healthy(KAFKA, lambda: port_in_use(self.ports.kafka))


# One Go scheduler thread for the store (GOMAXPROCS, unless the environment sets it). The local
# stack sends it tens of requests a second; with a thread per core, Go's runtime wakes and
# spins idle threads on every request. Measured on this 2-core host (three 2,000-device orders
# each, alternating): 0.55 -> 0.46 s of the server's CPU an order, a small PUT 2.2 -> 1.3 ms.
WEED_ENV = {"GOMAXPROCS": "1"}


class S3Server:
    """The S3 store: SeaweedFS `weed mini` with credentials, every port pinned."""

    def __init__(self, supervisor: Supervisor, ports: StackPorts, tls: S3Tls | None = None):
        """A store on `ports.s3` (HTTPS with `tls`), its data under the supervisor's home."""
        self.supervisor = supervisor
        self.ports = ports
        self.tls = tls

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, or https when the store serves TLS."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.ports.s3}"

    def healthy(self) -> bool:
        """Whether `/healthz` answers 200."""
        context = ssl.create_default_context(cafile=self.tls.ca) if self.tls else None
        try:
            # Our own store's endpoint, http or https only.
            with urllib.request.urlopen(  # noqa: S310
                f"{self.endpoint}/healthz", timeout=1, context=context
            ) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, access_key: str, secret_key: str) -> None:
        """Start the store unless it runs; StackError if a port is taken or it fails."""
        if self.supervisor.live_pid(S3) is not None:
            return
        taken = [p for p in asdict(self.ports).values() if p != self.ports.kafka and port_in_use(p)]
        if taken:
            raise StackError(
                f"ports {taken} needed by the S3 store are in use: set MATTERFAB_S3_PORT "
                "(and MATTERFAB_S3_*_PORT) to free ports, or remove "
                f"{self.supervisor.home / 'ports.json'} to pick new internal ports"
            )
        data = self.supervisor.home / "data" / "s3"
        data.mkdir(parents=True, exist_ok=True)
        # Credentials go through the environment, not argv (argv is world-readable in /proc).
        env = child_env(WEED_ENV, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
        argv = [
            str(binaries.weed_binary()),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *self.ports.weed_flags(),
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false",
        ]
        if self.tls:
            argv += [f"-s3.cert.file={self.tls.cert}", f"-s3.key.file={self.tls.key}"]
        self.supervisor.spawn(S3, argv, env, data)
        self.supervisor.wait_healthy(S3, self.healthy)
