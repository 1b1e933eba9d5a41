"""Every port the local stack listens on, all on 127.0.0.1, and how free ones are picked."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from matterfab.config import LocalStackSettings
from matterfab.errors import StackError

HOST = "127.0.0.1"
# weed reaches some gRPC endpoints at "HTTP port + 10000" whatever the flags say (its admin
# worker does), so every gRPC port is kept at that offset, and HTTP ports are drawn below the
# kernel's ephemeral range so neither port of a pair collides with outgoing connections.
GRPC_OFFSET = 10000
PORT_RANGE = (10000, 22767)


@dataclass
class StackPorts:
    """Every port the local stack listens on (all on 127.0.0.1)."""

    kafka: int
    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def free(cls) -> StackPorts:
        """All ports picked free right now (for tests and side-by-side stacks)."""
        kafka, s3, master, volume, filer, admin = free_ports(6)
        return cls.with_offsets(kafka, s3, master, volume, filer, admin)

    @classmethod
    def with_offsets(
        cls, kafka: int, s3: int, master: int, volume: int, filer: int, admin: int
    ) -> StackPorts:
        """Ports from the HTTP ones, each gRPC port at its HTTP port + 10000."""
        g = GRPC_OFFSET
        return cls(
            kafka, s3, s3 + g, master, master + g, volume, volume + g, filer, filer + g,
            admin, admin + g,
        )  # fmt: skip

    @classmethod
    def from_settings(cls, settings: LocalStackSettings | None = None) -> StackPorts:
        """Kafka and S3 ports from env (defaults 19092/18333); unset internal ports picked free."""
        s = settings or LocalStackSettings()
        configured = [s.s3_master_port, s.s3_volume_port, s.s3_filer_port, s.s3_admin_port]
        fixed = {s.kafka_port, s.s3_port} | {p for p in configured if p is not None}
        spare = iter(free_ports(sum(p is None for p in configured), exclude=fixed))
        master, volume, filer, admin = (p if p is not None else next(spare) for p in configured)
        return cls.with_offsets(s.kafka_port, s.s3_port, master, volume, filer, admin)

    def follow(self, settings: LocalStackSettings) -> StackPorts:
        """These ports, with Kafka's and S3's replaced where the settings set them explicitly
        (remembered internal ports persist)."""
        if "kafka_port" in settings.model_fields_set:
            self.kafka = settings.kafka_port
        if "s3_port" in settings.model_fields_set:
            self.s3 = settings.s3_port
        return self

    def weed_flags(self) -> list[str]:
        """The `weed mini` flags that pin every port."""
        return [
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-admin.port={self.admin}",
            f"-admin.port.grpc={self.admin_grpc}",
        ]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, exclude: set[int] | None = None) -> list[int]:
    """`count` distinct ports p, each with p + 10000 also free, drawn at random from 10000-22767."""
    taken = set(exclude or ())
    ports: list[int] = []
    rng = random.SystemRandom()
    for _ in range(2000):
        if len(ports) == count:
            return ports
        port = rng.randint(*PORT_RANGE)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken or not all(_bindable(p) for p in pair):
            continue
        ports.append(port)
        taken |= pair
    if len(ports) == count:
        return ports
    raise StackError(f"could not find {count} free port pairs in {PORT_RANGE}")


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0
