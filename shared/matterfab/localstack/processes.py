"""Process supervision for the local stack: start in the background, record, stop by PID.

Processes are started in their own session (a Ctrl-C in the terminal that ran `up` does not
reach them) and stopped by the PID recorded at start, never by name: SIGTERM (the broker
snapshots on a clean shutdown only), SIGKILL after a timeout. A PID file also records the
process start time, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matterfab.errors import StackError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


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


def child_env(defaults: dict[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """The environment of a process the stack starts: this one's, over `defaults` (a variable
    already set wins), under `overrides`. The only place the local stack reads os.environ."""
    return {**(defaults or {}), **os.environ, **overrides}


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (it may hold secrets)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


class Supervisor:
    """The processes of one state folder: `home/pids/<name>.pid` and `home/logs/<name>.log`."""

    def __init__(self, home: Path):
        """Supervise the processes recorded under `home`."""
        self.home = home
        self._children: dict[str, subprocess.Popen[bytes]] = {}

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

    def read_pid(self, name: str) -> PidRecord | None:
        """The PID file of `name`, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self._pid_path(name).read_text())
            return PidRecord(int(data["pid"]), int(data["start_ticks"]), list(data["argv"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def live_pid(self, name: str) -> int | None:
        """The PID of `name` if that very process still runs."""
        record = self.read_pid(name)
        if record is not None and record.alive():
            return record.pid
        return None

    def recorded(self) -> list[str]:
        """Names of every process with a PID file, sorted."""
        if not self.pid_dir.is_dir():
            return []
        return sorted(path.stem for path in self.pid_dir.glob("*.pid"))

    def forget(self, name: str) -> None:
        """Drop the PID file of a process that is gone."""
        self._pid_path(name).unlink(missing_ok=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> int:
        """Start `argv` in its own session, output to its log; record and return its PID."""
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
        write_private(self._pid_path(name), json.dumps(record))
        self._children[name] = proc
        return proc.pid

    def stop(self, names: list[str], timeout: float) -> list[str]:
        """Stop processes (SIGTERM all, then wait, SIGKILL after `timeout`); those that ran."""
        running: list[tuple[str, PidRecord]] = []
        for name in names:
            record = self.read_pid(name)
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
            self.forget(name)
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

    def wait_healthy(
        self, name: str, check: Callable[[], bool], timeout: float = START_TIMEOUT_S
    ) -> None:
        """Wait until `check()` holds; StackError quoting the log if `name` dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live_pid(name) is None:
                raise StackError(f"{name} exited during start-up:\n{self.log_tail(name)}")
            if check():
                return
            time.sleep(0.1)
        raise StackError(f"{name} not healthy after {timeout:.0f}s:\n{self.log_tail(name)}")
