"""Sampling profiles of running services with py-spy (`--profile`): top functions by self time.

py-spy attaches to a PID from outside (ptrace), so the services run unmodified; with
`--subprocesses` the builder's worker processes are sampled too. Output: collapsed stacks
(`--format raw`) under bench/out/, summarised as the functions where samples land.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _frame(frame: str) -> str:
    # "handle (.../builder/service.py:95)" -> "handle (.../builder/service.py)"
    return _LINE.sub(")", frame.strip())


def top_entries(raw: str, limit: int = 15) -> dict[str, Any]:
    """Top functions by self and by inclusive samples from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        # The first frame names the process/thread; skip it for function statistics.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "percent": round(100 * n / total, 1)}
            for f, n in counter.most_common(limit)
        ]

    return {"samples": total, "self": pct(self_counts), "inclusive": pct(incl)}


class Profiles:
    """py-spy recorders attached to some services for the duration of one order."""

    def __init__(self, pids: dict[str, int], out_dir: Path, tag: str, rate: int = 100):
        self.out_dir = out_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        exe = py_spy()
        if exe is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            path = out_dir / f"profile-{tag}-{name}.txt"
            argv = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
            argv += ["--format", "raw", "--rate", str(rate), "-o", str(path)]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs[name] = (proc, path)

    def finish(self) -> None:
        """Stop the recorders (SIGINT makes py-spy write its output)."""
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
        for proc, _ in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def result(self) -> dict[str, Any]:
        """Top entries per profiled service (or the error py-spy gave)."""
        out: dict[str, Any] = {}
        for name, (proc, path) in self.procs.items():
            if path.exists() and path.stat().st_size:
                out[name] = {"file": str(path), **top_entries(path.read_text())}
            else:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                out[name] = {"error": err.strip()[-500:] or "no output"}
        return out
