"""`LocalStack`: the embedded broker and S3 store plus background services, one state folder.

    home/pids/<name>.pid     one per process this stack started (broker, s3, each service)
    home/logs/<name>.log     their output
    home/data/{kafka,s3}     their data
    (and the state files of `state.StateFolder`)

It composes the parts: a Supervisor (processes by PID), the Broker and S3Server, and the
StateFolder. `start` starts broker then store, creates the bucket, topics and line `local`,
and writes `stack.json`; `stop` stops services first, then the store, then the broker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from matterfab.config import KafkaSettings, S3Settings
from matterfab.errors import StackError
from matterfab.localstack.ports import HOST, StackPorts
from matterfab.localstack.processes import START_TIMEOUT_S, PidRecord, Supervisor, child_env
from matterfab.localstack.servers import KAFKA, S3, STOP_TIMEOUT_S, Broker, S3Server, S3Tls
from matterfab.localstack.state import StateFolder

T = TypeVar("T")

INFRA = (KAFKA, S3)
BUCKET = "matterfab"
SERVICE_STOP_TIMEOUT_S = 15.0


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
        self.processes = Supervisor(self.home)
        self.state = StateFolder(self.home)

    # ---- parts

    @property
    def ports(self) -> StackPorts:
        """The ports of this stack: given, else remembered from a previous start, else chosen."""
        if self._ports is None:
            self._ports = self.state.remembered_ports() or StackPorts.from_settings()
        return self._ports

    @property
    def broker(self) -> Broker:
        """The embedded broker of this stack."""
        return Broker(self.processes, self.ports)

    @property
    def s3(self) -> S3Server:
        """The S3 store of this stack."""
        return S3Server(self.processes, self.ports, self.s3_tls)

    @property
    def s3_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, or https when the store serves TLS."""
        return self.s3.endpoint

    def _credentials(self) -> tuple[str, str]:
        return self.state.credentials(self._access_key, self._secret_key)

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

    # ---- processes (the Supervisor's, named as tests and the CLI know them)

    @property
    def pid_dir(self) -> Path:
        """Folder of the PID files."""
        return self.processes.pid_dir

    @property
    def log_dir(self) -> Path:
        """Folder of the process logs."""
        return self.processes.log_dir

    def log_path(self, name: str) -> Path:
        """The log file of process `name`."""
        return self.processes.log_path(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last `lines` lines of the log of `name` (for error messages)."""
        return self.processes.log_tail(name, lines)

    def _read_pid(self, name: str) -> PidRecord | None:
        return self.processes.read_pid(name)

    def _live_pid(self, name: str) -> int | None:
        return self.processes.live_pid(name)

    # ---- start and stop

    async def _provision(self) -> None:
        # Imported here: the client libraries load only when a stack is started.
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
        with self.state.locked():
            started_here: list[str] = []
            try:
                if self._live_pid(KAFKA) is None:
                    started_here.append(KAFKA)
                self.broker.start()
                if self._live_pid(S3) is None:
                    started_here.append(S3)
                self.s3.start(*self._credentials())
                self.state.ensure_kek()
                self.state.remember_ports(self.ports)
                _run_async(self._provision())
            except BaseException:
                # Leave nothing half-started behind: stop what this call started, in reverse.
                for name in reversed(started_here):
                    self.processes.stop([name], STOP_TIMEOUT_S[name])
                raise
            access, secret = self._credentials()
            self.state.write_stack(
                {
                    "bootstrap": self.broker.bootstrap,
                    "s3_endpoint": self.s3_endpoint,
                    "s3_ca_bundle": str(self.s3_tls.ca) if self.s3_tls else None,
                    "s3_access_key": access,
                    "s3_secret_key": secret,
                    "s3_bucket": self.bucket,
                    "kafka_pid": self._live_pid(KAFKA),
                    "s3_pid": self._live_pid(S3),
                    "ports": asdict(self.ports),
                }
            )

    def stop(self) -> None:
        """Stop every service, then the store, then the broker; only what `start` started."""
        with self.state.locked():
            self.processes.stop(list(self.running_services()), SERVICE_STOP_TIMEOUT_S)
            for name in self.processes.recorded():
                if name not in INFRA:  # dead services: just forget them
                    self.processes.forget(name)
            self.state.remove_stack()
            self.processes.stop([S3], STOP_TIMEOUT_S[S3])
            self.processes.stop([KAFKA], STOP_TIMEOUT_S[KAFKA])

    # ---- services

    def start_service(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        defaults: dict[str, str] | None = None,
    ) -> int:
        """Run `argv` in the background as service `name` (once); return its PID.

        Its environment is this process's, over `defaults` (a variable already set wins),
        under `env`, plus where this stack is.
        """
        if name in INFRA or not name.replace("-", "").replace("_", "").isalnum():
            raise StackError(f"service name {name!r} must be alphanumeric and not {INFRA}")
        pid = self._live_pid(name)
        if pid is not None:
            return pid
        # The service finds this stack through its state folder (config.load_*_settings).
        child = child_env(
            defaults, MATTERFAB_HOME=str(self.home), MATTERFAB_KAFKA_EMBEDDED="1", **(env or {})
        )
        return self.processes.spawn(name, argv, child, Path.cwd())

    def stop_service(self, name: str) -> bool:
        """Stop service `name` if it runs; True if it was running."""
        return bool(self.processes.stop([name], SERVICE_STOP_TIMEOUT_S))

    def running_services(self) -> dict[str, int]:
        """Services (not broker or store) of this stack that are running: name -> PID."""
        running = {}
        for name in self.processes.recorded():
            pid = None if name in INFRA else self._live_pid(name)
            if pid is not None:
                running[name] = pid
        return running

    def status(self) -> dict[str, Any]:
        """What runs, where, and with which PID."""
        return {
            "home": str(self.home),
            "kafka": {
                "pid": self._live_pid(KAFKA),
                "bootstrap": self.broker.bootstrap,
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
