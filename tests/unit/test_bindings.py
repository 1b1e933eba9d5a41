"""bindings.csv rendering, duplicate-MAC detection and the assembler's station aggregation."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from matterfab.messages import ORDER_EVENTS, OrderEvent, StationResult
from matterfab.messages.codec import encode
from matterfab.messages.station import station_record_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.assembler import bindings
from matterfab.services.assembler.stations import StationResults

AT = datetime(2026, 11, 21, 10, 15, 2, 123456, tzinfo=UTC)


def result(index: int, status: str = "flashed", order: str = "O", **kw: Any) -> StationResult:
    mac = kw.pop("mac", f"02:00:00:00:00:{index:02x}" if status == "flashed" else None)
    return StationResult.model_validate(
        {
            "order_id": order,
            "device_id": f"{order}/{index:07d}",
            "index": index,
            "serial_num": f"SN{index}",
            "station_id": "s1",
            "line": "L",
            "status": status,
            "mac": mac,
            "at": AT,
            **kw,
        }
    )


def test_bindings_csv_has_the_contract_columns_in_index_order() -> None:
    body = bindings.bindings_csv([result(2), result(0), result(1, "failed", reason="x")])
    lines = body.decode().splitlines()
    assert lines[0] == "device_id,serial_num,station_id,mac,flashed_at,dac_serial,dac_sha256"
    assert lines[1:] == [
        "O/0000000,SN0,s1,02:00:00:00:00:00,2026-11-21T10:15:02.123Z,,",
        "O/0000001,SN1,s1,,,,",
        "O/0000002,SN2,s1,02:00:00:00:00:02,2026-11-21T10:15:02.123Z,,",
    ]


def test_bindings_csv_gives_the_dac_of_device_key_devices() -> None:
    sha = "ab" * 32
    body = bindings.bindings_csv([result(0, dac_serial="7f01", dac_sha256=sha)])
    assert body.decode().splitlines()[1] == (
        f"O/0000000,SN0,s1,02:00:00:00:00:00,2026-11-21T10:15:02.123Z,7f01,{sha}"
    )


def test_failed_csv_lists_only_final_failures_with_reasons() -> None:
    body = bindings.failed_csv(
        [result(0), result(1, "failed", reason="no chip, twice", attempts=3, requeues=2)]
    )
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert rows == [
        {
            "device_id": "O/0000001",
            "serial_num": "SN1",
            "station_id": "s1",
            "reason": "no chip, twice",
            "attempts": "3",
            "requeues": "2",
            "at": "2026-11-21T10:15:02.123Z",
        }
    ]


def test_rendering_is_deterministic() -> None:
    outcomes = [result(i) for i in range(5)]
    assert bindings.bindings_csv(outcomes) == bindings.bindings_csv(reversed(outcomes))


def test_duplicate_macs() -> None:
    same = "02:00:00:00:00:aa"
    outcomes = [result(0, mac=same), result(1), result(2, mac=same), result(3, "failed")]
    assert bindings.duplicate_macs(outcomes) == {same: ["O/0000000", "O/0000002"]}
    assert bindings.duplicate_macs([result(0), result(1)]) == {}
    assert bindings.counts(outcomes) == (3, 1)


def order_store(quantity: int) -> MemoryObjectStore:
    store = MemoryObjectStore()
    store.objects["orders/O/order.json"] = json.dumps({"quantity": quantity}).encode()
    return store


def record(store: MemoryObjectStore, res: StationResult) -> StationResult:
    """What a station does before publishing a final result."""
    store.objects[station_record_key(res.order_id, res.index)] = encode(res)
    return res


def events(emits: list[Any]) -> list[OrderEvent]:
    return [e.message for e in emits if e.topic == ORDER_EVENTS]


async def test_last_result_writes_complete_bindings_and_reports() -> None:
    store = order_store(3)
    agg = StationResults(store, write_interval=3600)  # type: ignore[arg-type]
    assert events(await agg.handle(record(store, result(0)))) != []  # first write: rebuilt state
    assert await agg.handle(record(store, result(1))) == []  # throttled
    assert await agg.handle(result(2, "failed", final=False)) == []  # a re-queue report only
    [ev] = events(await agg.handle(record(store, result(2, "failed", reason="gone"))))
    assert (ev.status, ev.flashed, ev.failed, ev.quantity, ev.errors) == ("progress", 2, 1, 3, [])
    rows = list(csv.DictReader(io.StringIO(store.objects["orders/O/bindings.csv"].decode())))
    assert [r["mac"] for r in rows] == ["02:00:00:00:00:00", "02:00:00:00:00:01", ""]
    assert b"gone" in store.objects["orders/O/bindings-failed.csv"]
    assert await agg.handle(result(2, "failed", reason="gone")) == []  # finished: ignored


async def test_restarted_assembler_rebuilds_from_the_bucket_and_finishes() -> None:
    store = order_store(3)
    for i in range(3):
        record(store, result(i))  # all recorded; the old instance died before its last write
    agg = StationResults(store, write_interval=3600)  # type: ignore[arg-type]
    [ev] = events(await agg.handle(result(2)))  # the redelivered last result
    assert ev.flashed == 3
    assert store.objects["orders/O/bindings.csv"].decode().count("\n") == 4


async def test_one_mac_on_two_devices_is_reported() -> None:
    store = order_store(2)
    same = "02:00:00:00:00:aa"
    agg = StationResults(store, write_interval=0)  # type: ignore[arg-type]
    await agg.handle(record(store, result(0, mac=same)))
    [ev] = events(await agg.handle(record(store, result(1, mac=same))))
    assert [e.field for e in ev.errors] == ["mac"]
    assert "O/0000000" in ev.errors[0].message and "O/0000001" in ev.errors[0].message


async def test_mac_reused_across_orders_is_reported() -> None:
    store = order_store(1)
    store.objects["orders/P/order.json"] = json.dumps({"quantity": 1}).encode()
    same = "02:00:00:00:00:aa"
    agg = StationResults(store, write_interval=0)  # type: ignore[arg-type]
    [first] = events(await agg.handle(record(store, result(0, mac=same))))
    assert first.errors == []
    [ev] = events(await agg.handle(record(store, result(0, order="P", mac=same))))
    assert ev.order_id == "P" and ev.errors and ev.errors[0].field == "mac"
    assert "O/0000000" in ev.errors[0].message
