"""Commands find their stack only where told, and say which one (issue #23).

The state folder is `$MATTERFAB_HOME`, else `./.matterfab`: never a parent directory's. A
command names the stack it uses in one `stack: …` line on stderr when stderr is a terminal
(or with `--debug`); a script that captures stderr still sees just its one `error:` line.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERFAB_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run `matterfab argv` with stderr on a pseudo-terminal; its exit code and stderr."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "matterfab.cli.main", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        cwd=cwd,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode().replace("\r\n", "\n")


def run_piped(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matterfab.cli.main", *argv],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_a_command_on_a_terminal_names_its_stack(tmp_path: Path) -> None:
    code, err = run_on_a_terminal(["order", "status", "X"], tmp_path, environment())
    lines = [line for line in err.splitlines() if line.strip()]
    home = tmp_path.resolve() / ".matterfab"
    assert code == 1, err
    assert lines[0] == f"stack: none running at {home} (kafka not found, s3 not found)", err
    assert lines[1].startswith("error: no Kafka configured"), err


def test_a_script_sees_one_error_line(tmp_path: Path) -> None:
    done = run_piped(["order", "status", "X"], tmp_path, environment())
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: no Kafka configured") and str(tmp_path) in line


def test_debug_names_the_stack_from_the_variables(tmp_path: Path) -> None:
    env = environment(MATTERFAB_KAFKA_BOOTSTRAP="127.0.0.1:1", MATTERFAB_DEBUG="1")
    done = run_piped(["topics", "apply"], tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "stack: none running at "
        f"{tmp_path.resolve() / '.matterfab'} (kafka 127.0.0.1:1 from MATTERFAB_KAFKA_BOOTSTRAP, "
        "s3 not found)"
    )


def test_a_parent_directorys_stack_is_not_used(tmp_path: Path) -> None:
    parent = tmp_path / ".matterfab"
    parent.mkdir()
    (parent / "stack.json").write_text(json.dumps({"bootstrap": "127.0.0.1:1"}))
    below = tmp_path / "below"
    below.mkdir()
    done = run_piped(["order", "status", "X"], below, environment())
    assert done.returncode == 1
    assert f"no running stack found at {below.resolve() / '.matterfab' / 'stack.json'}; " in (
        done.stderr
    )
    assert "MATTERFAB_HOME names another state folder" in done.stderr
    # Named explicitly, it is the one used (and the command then tries its broker).
    code, err = run_on_a_terminal(
        ["order", "status", "X"], below, environment(MATTERFAB_HOME=str(parent))
    )
    assert f"stack: {parent.resolve()} (kafka 127.0.0.1:1, s3 not found)" in err
    assert code == 1 and "error: Kafka at 127.0.0.1:1 is unreachable" in err, err
