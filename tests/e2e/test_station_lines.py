"""Stations and lines end to end (issue #20): a station with the wrong key stops at start with
one line and consumes nothing; a station of another line skips the order with one log line;
then the right station flashes every device, from plaintext it opened in memory."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import (
    Services,
    cli_env,
    manifest_doc,
    matterfab,
    wait_for,
    work_order,
    write_order,
)
from tests.sealed import ensure_line

pytestmark = pytest.mark.timeout(600)

ORDER = "SEAL-LINE-C"
QUANTITY = 6


def station_argv(name: str, line: str, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "matterfab.cli.main", "station", "run", "--station-id", name]
    return [*argv, "--line", line, "--order", ORDER, *options]


def log_lines(stack: LocalStack, name: str) -> list[dict[str, object]]:
    path = stack.log_path(name)
    text = path.read_text(errors="replace") if path.exists() else ""
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


async def bindings(stack: LocalStack) -> list[dict[str, str]]:
    async with ObjectStore.open(stack.s3_settings()) as store:
        raw = await store.get_or_none(f"orders/{ORDER}/bindings.csv")
        manifest = await store.get_or_none(f"orders/{ORDER}/manifest.csv")
    if raw is None or manifest is None:
        return []
    return list(csv.DictReader(io.StringIO(raw.decode())))


def test_wrong_key_and_other_line_lose_nothing_then_the_right_station_flashes_all(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    key, stray = tmp_path / "line-c.pem", tmp_path / "stray.pem"
    for line, path in (("line-c", key), ("line-stray", stray)):
        made = matterfab(stack, "line", "create", line, "--key-out", str(path))
        assert made.returncode == 0, made.stdout + made.stderr
    order = work_order(ORDER, QUANTITY, profile, line="line-c")
    done = matterfab(stack, "order", "submit", str(write_order(tmp_path, order)), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr

    # A key that is not line-c's (it is another line's): one error line at start, exit 1.
    wrong = subprocess.run(
        station_argv("st-wrong", "line-c", "--line-key", str(stray), "--out", str(tmp_path / "w")),
        env=cli_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    errors = [ln for ln in wrong.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "is not a registered key of the line" in errors[0], wrong.stderr
    assert "Traceback" not in wrong.stderr + wrong.stdout
    assert not (tmp_path / "w").exists()

    # A station of line local (its key found in the state folder) skips line-c's order.
    other = tmp_path / "other"
    stack.start_service("st-local", station_argv("st-local", "local", "--out", str(other)))
    right = tmp_path / "right"
    try:
        wait_for(
            lambda: [ln for ln in log_lines(stack, "st-local") if "skipped" in str(ln["msg"])],
            120,
            "the line local station to skip the order",
        )
        # The right station: line-c's key given on the command line.
        options = ("--line-key", str(key), "--out", str(right))
        stack.start_service("st-right", station_argv("st-right", "line-c", *options))
        rows = wait_for(
            lambda: len(got := asyncio.run(bindings(stack))) >= QUANTITY and got,
            240,
            "every device flashed",
        )
    finally:
        stack.stop_service("st-right")
        stack.stop_service("st-local")
    assert {r["station_id"] for r in rows} == {"st-right"} and all(r["mac"] for r in rows)
    skipped = [ln for ln in log_lines(stack, "st-local") if "skipped" in str(ln["msg"])]
    assert len(skipped) == 1 and "sealed for line line-c" in str(skipped[0]["msg"])
    assert not other.exists()  # nothing flashed by the other line's station
    # What the right station wrote is the plaintext the manifest names (manifest.csv digests).
    manifest = asyncio.run(_manifest(stack))
    for row in manifest:
        data = (right / ORDER / row["index"] / "partition.bin").read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["partition_sha256"]
        assert not data.startswith(b"matterfab-sealed/")


async def _manifest(stack: LocalStack) -> list[dict[str, str]]:
    async with ObjectStore.open(stack.s3_settings()) as store:
        raw = await store.get(f"orders/{ORDER}/manifest.csv")
    return list(csv.DictReader(io.StringIO(raw.decode())))


def test_objects_swapped_between_devices_are_refused_naming_the_device(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    order_id, line = "SEAL-SWAP", "line-swap"
    ensure_line(stack, line)  # its key in the state folder, where the station finds it
    order = work_order(order_id, 2, profile, line=line)
    done = matterfab(stack, "order", "submit", str(write_order(tmp_path, order)), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr

    async def swap() -> None:
        """The two devices' sealed partitions swapped inside their lot's images.lot."""
        async with ObjectStore.open(stack.s3_settings()) as store:
            doc = await manifest_doc(store, order_id)
            a, b = (d["objects"]["partition"] for d in doc["devices"])
            assert a["key"] == b["key"]  # one lot
            body = bytearray(await store.get(a["key"]))
            pa = bytes(body[a["offset"] : a["offset"] + a["size"]])
            pb = bytes(body[b["offset"] : b["offset"] + b["size"]])
            # Encoded partitions (ff-runs/1) differ in size by a few bytes: each device's range
            # gets the other's piece, cut or zero-padded to fit; its header comes first.
            body[a["offset"] : a["offset"] + a["size"]] = pb[: a["size"]].ljust(a["size"], b"\0")
            body[b["offset"] : b["offset"] + b["size"]] = pa[: b["size"]].ljust(b["size"], b"\0")
            await store.put(a["key"], bytes(body))  # an operator's (or an attacker's) overwrite

    asyncio.run(swap())
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "matterfab.cli.main", "station", "run", "--station-id"]
    argv += ["st-swap", "--line", line, "--order", order_id, "--out", str(out)]
    stack.start_service("st-swap", [*argv, "--max-requeues", "0"])
    try:
        refused = wait_for(
            lambda: (
                len(
                    r := [
                        ln for ln in log_lines(stack, "st-swap") if "not flashed" in str(ln["msg"])
                    ]
                )
                >= 2
                and r
            ),
            120,
            "both devices refused",
        )
    finally:
        stack.stop_service("st-swap")
    said = sorted(str(ln["msg"]) for ln in refused)
    assert len(said) == 2, said
    for mine, other in ((0, 1), (1, 0)):
        line_ = said[mine]
        assert f"device {order_id}/{mine:07d} not flashed" in line_, line_
        assert f"sealed for device {order_id}/{other:07d}, not {order_id}/{mine:07d}" in line_
    assert not out.exists()  # nothing flashed

    async def records() -> list[str]:
        async with ObjectStore.open(stack.s3_settings()) as store:
            return await store.list_keys(f"orders/{order_id}/station/")

    assert asyncio.run(records()) == []  # no final failure recorded: nothing lost
