"""Serial numbers never repeat across orders: what an ERP sees on the whole pipeline.

Order A takes SC-0001..SC-0004; an overlapping pattern and an explicit SC-0004 are rejected
(`order submit --wait` exits 2 naming the field, the values and order A) and leave nothing
behind, so the corrected order is accepted under the same order_id; `serial check` says
which order holds which values before anyone submits.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import Services, matterfab, work_order, write_order

PREFIX = "SC-"
PATTERN = {"prefix": PREFIX, "start": 1, "digits": 4}


def submit(
    stack: LocalStack, tmp_path: Path, order: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return matterfab(
        stack, "order", "submit", str(write_order(tmp_path, order)), "--wait", "--timeout", "300"
    )


def check(
    stack: LocalStack, start: int, count: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    return matterfab(
        stack, "serial", "check", "--vid", "0xFFF1", "--pid", "0x8000", "--prefix", PREFIX,
        "--start", str(start), "--count", str(count), *extra,
    )  # fmt: skip


async def claimed_by(store: ObjectStore, order_id: str) -> int:
    keys = await store.list_keys("state/products/FFF1-8000/claims/")
    records = [json.loads(await store.get(k)) for k in keys]
    return sum(1 for r in records if r["order_id"] == order_id)


async def test_overlapping_serials_are_rejected_and_leave_nothing(
    stack: LocalStack, store: ObjectStore, pipeline: Services, profile: str, tmp_path: Path
) -> None:
    done = check(stack, 1, 4)
    assert done.returncode == 0 and "free" in done.stdout, done.stdout + done.stderr

    a = work_order("HB-SER-A", 4, profile, serial=PATTERN)
    done = submit(stack, tmp_path, a)
    assert done.returncode == 0, done.stdout + done.stderr

    done = check(stack, 3, 4, "--digits", "4", "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["free"] is False
    assert answer["held"] == [
        {"first": "SC-0003", "last": "SC-0004", "count": 2, "order_id": "HB-SER-A"}
    ]
    done = check(stack, 3, 4)
    assert done.returncode == 2 and "SC-0003..SC-0004 (2) held by order HB-SER-A" in done.stdout

    b = work_order("HB-SER-B", 4, profile, serial={**PATTERN, "start": 3})
    done = submit(stack, tmp_path, b)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "serial: SC-0003..SC-0004 already used by order HB-SER-A" in done.stderr
    assert not await store.exists("orders/HB-SER-B/order.json")
    assert await claimed_by(store, "HB-SER-B") == 0

    explicit = [{"serial_num": "SC-9001"}, {"serial_num": "SC-0004"}]
    c = work_order("HB-SER-C", 2, profile, devices=explicit)
    done = submit(stack, tmp_path, c)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "devices[1].serial_num: SC-0004 already used by order HB-SER-A" in done.stderr

    # Corrected, under the same order_id: nothing of the rejected one stands in the way.
    done = submit(stack, tmp_path, {**b, "serial": {**PATTERN, "start": 5}})
    assert done.returncode == 0, done.stdout + done.stderr
    # Resubmitting A is idempotent; A's order_id with other content stays rejected.
    done = submit(stack, tmp_path, a)
    assert done.returncode == 0, done.stdout + done.stderr
    done = submit(stack, tmp_path, {**a, "quantity": 3})
    assert done.returncode == 2 and "order_id" in done.stderr, done.stdout + done.stderr
    assert await claimed_by(store, "HB-SER-A") == 1
    assert await claimed_by(store, "HB-SER-B") == 1
