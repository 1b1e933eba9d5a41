"""Every command fails cleanly when Kafka or S3 is away, refuses us, or lacks the bucket.

Table-driven over command x {broker down, S3 down, wrong S3 secret, missing bucket} on the real
local stack (issue #15). Each case runs `python -m matterfab.cli.main …` as a subprocess, as a
script or an operator would, all cases in parallel. A command that needs the failing dependency
prints exactly one line (`error: …` naming what failed, where, and the variable to set or
`make up`), exits 1 within 15 s, with no traceback and no unclosed-client warning. A command
that does not use it is unaffected. Long-running processes (`station run`, `serve`) wait out an
unreachable dependency (one line per attempt) and stop at once, in one line, on what no wait
fixes. `MATTERFAB_DEBUG=1` adds the traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from matterfab.stack import LocalStack, free_ports
from tests.vectors_path import vectors_dir

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
ORDER_FILE = vectors_dir().parent / "examples" / "work-order.json"
BOUND_S = 15.0  # issue #15: a command reports an unusable dependency within 15 s
WATCH_S = 8.0  # how long a long-running process is watched before SIGTERM
WRONG_SECRET = "wrong-secret-cli-failures-0123456789"

# How each scenario breaks the environment, and what its one line must name.
SCENARIOS = {
    "broker down": ("kafka", ["127.0.0.1:1", "MATTERFAB_KAFKA_BOOTSTRAP", "`make up`"]),
    "S3 down": ("s3", ["{s3_down}", "MATTERFAB_S3_ENDPOINT", "`make up`"]),
    "wrong S3 secret": ("s3", ["refused the credentials", "MATTERFAB_S3_SECRET_KEY", "{s3}"]),
    "missing bucket": ("s3", ["'no-such-bucket' does not exist", "MATTERFAB_S3_BUCKET", "{s3}"]),
}
NEEDS = {  # command -> (argv after `matterfab`, dependencies it uses, long-running)
    "order submit": (["order", "submit", str(ORDER_FILE)], {"kafka"}, False),
    "order submit --wait": (["order", "submit", str(ORDER_FILE), "--wait"], {"kafka"}, False),
    "order status": (["order", "status", "CLIFAIL-NONE"], {"kafka"}, False),
    "order fetch": (["order", "fetch", "CLIFAIL-NONE", "--out", "{tmp}/out"], {"s3"}, False),
    "verify": (["verify", "CLIFAIL-NONE"], {"s3"}, False),
    "topics apply": (["topics", "apply"], {"kafka"}, False),
    "lag": (["lag"], {"kafka"}, False),
    "pki init-test": (
        ["pki", "init-test", "--vid", "0xFFF1", "--pid", "0x8001", "--name", "clifail",
         "--profiles-dir", "{tmp}/profiles"],
        {"s3"},
        False,
    ),
    "station run": (
        ["station", "run", "--station-id", "clifail", "--line", "clifail", "--out", "{tmp}/img"],
        {"kafka", "s3"},
        True,
    ),
    "serve allocator": (["serve", "allocator"], {"kafka", "s3"}, True),
}  # fmt: skip
# Runs left out on purpose: a work order sent while only S3 is broken would really be
# published into the shared test stack (another test's allocator would then see it).
SKIPPED = {("order submit", s) for s in ("S3 down", "wrong S3 secret", "missing bucket")} | {
    ("order submit --wait", s) for s in ("S3 down", "wrong S3 secret", "missing bucket")
}


@dataclass(frozen=True)
class Run:
    """What one command printed and how it ended."""

    lines: list[str]
    code: int | None  # None: still running when watched long-running process was stopped
    seconds: float
    text: str


def meaningful(text: str) -> list[str]:
    """Output lines, without blank ones and the broker binary's loader warning."""
    return [line for line in text.splitlines() if line.strip() and "GLIBC" not in line]


def run(argv: list[str], env: dict[str, str], cwd: Path, long_running: bool) -> Run:
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "matterfab.cli.main", *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=WATCH_S if long_running else BOUND_S + 15)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # our own child, by its PID
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        code = None
    text = out.decode(errors="replace")
    return Run(meaningful(text), code, time.monotonic() - began, text)


def cases() -> list[tuple[str, str]]:
    return [(c, s) for c in NEEDS for s in SCENARIOS if (c, s) not in SKIPPED]


@pytest.fixture(scope="module")
def world(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The base environment (the session stack, set explicitly) and the values cases name."""
    s3 = stack.s3_settings()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MATTERFAB_")}
    base.update(
        MATTERFAB_HOME=str(stack.home),
        MATTERFAB_TOPICS_FILE=str(ROOT / "deploy" / "topics.yaml"),
        MATTERFAB_KAFKA_BOOTSTRAP=stack.kafka_settings().bootstrap,
        MATTERFAB_KAFKA_EMBEDDED="1",
        MATTERFAB_S3_ENDPOINT=s3.endpoint,
        MATTERFAB_S3_ACCESS_KEY=s3.access_key,
        MATTERFAB_S3_SECRET_KEY=s3.secret_key.get_secret_value(),
        MATTERFAB_S3_BUCKET=s3.bucket,
        MATTERFAB_ALLOCATOR_INSTANCE_ID="clifail",
        MATTERFAB_ALLOCATOR_GROUP_ID="clifail-allocator",  # never the pipeline's own group
        PYTHONPATH=str(ROOT),
        COLUMNS="100",
    )
    yield {"s3": s3.endpoint, "s3_down": f"http://127.0.0.1:{free_ports(1)[0]}", **base}


def environment(world: dict[str, str], scenario: str) -> dict[str, str]:
    env = {k: v for k, v in world.items() if k not in ("s3", "s3_down")}
    if scenario == "broker down":
        env["MATTERFAB_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"
    elif scenario == "S3 down":
        env["MATTERFAB_S3_ENDPOINT"] = world["s3_down"]
    elif scenario == "wrong S3 secret":
        env["MATTERFAB_S3_SECRET_KEY"] = WRONG_SECRET
    elif scenario == "missing bucket":
        env["MATTERFAB_S3_BUCKET"] = "no-such-bucket"
    return env


@pytest.fixture(scope="module")
def results(world: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """Every case run once, in parallel (the table is printed for the record)."""

    def one(case: tuple[str, str]) -> Run:
        command, scenario = case
        tmp = tmp_path_factory.mktemp("clifail")
        argv = [a.replace("{tmp}", str(tmp)) for a in NEEDS[command][0]]
        return run(argv, environment(world, scenario), tmp, NEEDS[command][2])

    with ThreadPoolExecutor(max_workers=6) as pool:
        done = dict(zip(cases(), pool.map(one, cases()), strict=True))
    print("\ncommand x scenario: lines, exit, seconds")
    for (command, scenario), r in done.items():
        print(f"  {command:22} {scenario:16} {len(r.lines):3} {r.code!s:5} {r.seconds:5.1f}")
    return done


@pytest.mark.parametrize(("command", "scenario"), cases())
def test_command_fails_cleanly(
    command: str,
    scenario: str,
    results: dict,
    world: dict[str, str],  # type: ignore[type-arg]
) -> None:
    r: Run = results[(command, scenario)]
    dependency, named = SCENARIOS[scenario]
    _, uses, long_running = NEEDS[command]
    assert "Traceback" not in r.text, r.text[-2000:]
    assert "Unclosed" not in r.text, r.text[-2000:]
    assert WRONG_SECRET not in r.text
    assert world["MATTERFAB_S3_SECRET_KEY"] not in r.text
    wants = [n.format(s3=world["s3"], s3_down=world["s3_down"]) for n in named]
    if dependency not in uses:
        # Unaffected: it ran as with a healthy stack (nothing to find: exit 1 saying so).
        assert r.code in (0, 1), r.text
        assert r.seconds < BOUND_S, r.seconds
        assert not any(w in r.text for w in wants[:1]), r.text
        return
    if long_running and scenario in ("broker down", "S3 down"):
        # Waits it out: still running, one line per attempt (backoff 0.2 s doubling), each
        # naming where; SIGTERM ended it.
        assert r.code is None, r.text
        assert 1 <= len(r.lines) <= 12, r.lines
        assert all(wants[0] in line for line in r.lines), r.lines
        assert "attempt" in r.lines[-1] and "next attempt in" in r.lines[-1]
        return
    if command == "pki init-test":
        # The profile is made locally (exit 0); publishing it is left to the signer, and the
        # note says why in one line.
        assert r.code == 0, r.text
        assert r.seconds < BOUND_S, r.seconds
        notes = [line for line in r.lines if line.startswith("note:")]
        assert len(notes) == 1 and all(w in notes[0] for w in wants), r.lines
        return
    assert r.code == 1, r.text
    assert r.seconds < BOUND_S, r.seconds
    assert len(r.lines) == 1, r.lines
    (line,) = r.lines
    assert line.startswith("error: "), line
    for want in wants:
        assert want in line, (want, line)


def test_debug_shows_the_traceback(world: dict[str, str], tmp_path: Path) -> None:
    env = dict(environment(world, "broker down"), MATTERFAB_DEBUG="1")
    r = run(["lag"], env, tmp_path, long_running=False)
    assert r.code == 1
    assert "Traceback (most recent call last)" in r.text
    assert r.lines[-1].startswith("error: Kafka at 127.0.0.1:1 is unreachable")
    flag = run(["--debug", "lag"], environment(world, "broker down"), tmp_path, False)
    assert "Traceback (most recent call last)" in flag.text and flag.code == 1


SASL_PASSWORD = "sasl-password-never-printed-42"
KEY_PASSWORD = "key-password-never-printed-42"


@pytest.mark.parametrize("debug", ["", "1"])
def test_no_password_in_failure_lines(world: dict[str, str], tmp_path: Path, debug: str) -> None:
    """Failures with every secret setting in play never print a password or the S3 secret,
    tracebacks (MATTERFAB_DEBUG=1) included: broker down under SASL, settings that break
    rules (named by variable, not value), and the store refusing a wrong secret."""
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SASL_PASSWORD + "\n")
    sasl = {
        "MATTERFAB_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "MATTERFAB_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MATTERFAB_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "MATTERFAB_KAFKA_SASL_USERNAME": "factory",
    }
    cases = [
        (["lag"], dict(sasl, MATTERFAB_KAFKA_SASL_PASSWORD=SASL_PASSWORD)),
        (["lag"], dict(sasl, MATTERFAB_KAFKA_SASL_PASSWORD_FILE=str(secret_file))),
        (  # a password given twice, and a key password without TLS: rules broken
            ["topics", "apply"],
            dict(sasl, MATTERFAB_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
                 MATTERFAB_KAFKA_SASL_PASSWORD_FILE=str(secret_file),
                 MATTERFAB_KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD),
        ),
        (["verify", "CLIFAIL-NONE"], {"MATTERFAB_S3_SECRET_KEY": WRONG_SECRET}),
    ]  # fmt: skip
    for argv, extra in cases:
        env = dict(environment(world, "none"), MATTERFAB_DEBUG=debug, **extra)
        r = run(argv, env, tmp_path, long_running=False)
        assert r.code == 1, r.text
        for secret in (SASL_PASSWORD, KEY_PASSWORD, WRONG_SECRET, world["MATTERFAB_S3_SECRET_KEY"]):
            assert secret not in r.text, (argv, secret)
        assert r.lines[-1].startswith("error: "), r.lines
