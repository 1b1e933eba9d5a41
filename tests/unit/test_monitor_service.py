"""The monitor's pure parts: the order board, the metrics it renders, the page, the lag CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import typer
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from matterfab import kafka
from matterfab.cli import monitor as lag_cli
from matterfab.config import KafkaSettings
from matterfab.messages import ManifestRef, OrderEvent
from matterfab.services.monitor.app import Monitor
from matterfab.services.monitor.board import OrderBoard
from matterfab.services.monitor.lag import GroupLag, lag_rows
from matterfab.services.monitor.main import MonitorSettings
from matterfab.services.monitor.page import PAGE

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def event(order_id: str, status: str, ready: int = 0, quantity: int = 4, **kw) -> OrderEvent:
    kw.setdefault("at", T0)
    return OrderEvent(order_id=order_id, status=status, ready=ready, quantity=quantity, **kw)


def test_board_keeps_latest_state_and_percent() -> None:
    board = OrderBoard()
    board.apply(event("A", "accepted", 0))
    board.apply(event("A", "progress", 1, at=T0 + timedelta(seconds=1)))
    view = board.get("A")
    assert view is not None
    assert (view.status, view.ready, view.quantity, view.percent) == ("progress", 1, 4, 25)
    board.apply(event("A", "progress", 3))
    assert board.get("A").percent == 75  # type: ignore[union-attr]
    ref = ManifestRef(key="orders/A/manifest.json", sha256="0" * 64)
    board.apply(event("A", "completed", 4, manifest=ref))
    done = board.get("A")
    assert done is not None
    assert (done.status, done.percent, done.manifest_key) == ("completed", 100, ref.key)
    assert done.as_dict()["percent"] == 100
    assert done.at == T0 + timedelta(seconds=1)


def test_board_never_goes_backwards_on_replayed_events() -> None:
    board = OrderBoard()
    board.apply(event("A", "completed", 4))
    board.apply(event("A", "progress", 2))  # a redelivered older event
    view = board.get("A")
    assert view is not None
    assert (view.status, view.ready, view.percent) == ("completed", 4, 100)
    board.apply(event("A", "progress", 4, flashed=3))  # stations report after completion
    assert board.get("A").flashed == 3  # type: ignore[union-attr]


def test_board_rounds_down_so_100_means_every_image() -> None:
    board = OrderBoard()
    board.apply(event("B", "progress", 999, quantity=1000))
    assert board.get("B").percent == 99  # type: ignore[union-attr]


def test_board_rejected_order_keeps_errors() -> None:
    board = OrderBoard()
    errors = [{"field": "quantity", "message": "must be at most 1000000"}]
    board.apply(OrderEvent(order_id="bad id!", status="rejected", errors=errors))  # type: ignore[arg-type]
    view = board.get("bad id!")
    assert view is not None
    assert view.status == "rejected"
    assert view.errors == errors
    assert view.percent == 0


@given(st.lists(st.integers(0, 30), min_size=1, max_size=200), st.integers(1, 10))
def test_board_is_bounded_and_evicts_least_recent(ids: list[int], capacity: int) -> None:
    board = OrderBoard(capacity)
    for i in ids:
        board.apply(event(f"o{i}", "progress", 1))
    assert len(board) <= capacity
    # The board holds exactly the most recently updated distinct orders, newest first.
    recent: list[str] = []
    for i in reversed(ids):
        if f"o{i}" not in recent:
            recent.append(f"o{i}")
    assert [o.order_id for o in board.orders()] == recent[:capacity]
    assert board.events_seen == len(ids)


def test_board_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        OrderBoard(0)


def test_lag_rows_cover_partitions_never_committed() -> None:
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
    rows = lag_rows({tps[1]: 3}, tps, {tps[0]: 2, tps[1]: 5})
    assert rows == (kafka.PartitionLag("t", 0, None, 2, 2), kafka.PartitionLag("t", 1, 3, 5, 2))
    assert GroupLag("g", rows).total == 4


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_show_lag_and_order_progress() -> None:
    mon = Monitor(KafkaSettings(bootstrap="127.0.0.1:1"))
    mon.groups = [
        GroupLag(
            "matterfab-signer",
            (
                kafka.PartitionLag("mfg.devices.allocated", 0, 10, 12, 2),
                kafka.PartitionLag("mfg.devices.allocated", 1, None, 3, 3),
            ),
        )
    ]
    mon.board.apply(event("WO-1", "progress", 1))
    samples = metric_samples(generate_latest(mon.registry).decode())
    lbl = (("group", "matterfab-signer"), ("partition", "0"), ("topic", "mfg.devices.allocated"))
    assert samples[("matterfab_consumer_lag", lbl)] == 2
    assert samples[("matterfab_consumer_committed_offset", lbl)] == 10
    assert samples[("matterfab_group_lag", (("group", "matterfab-signer"),))] == 5
    order = (("order_id", "WO-1"),)
    assert samples[("matterfab_order_ready", order)] == 1
    assert samples[("matterfab_order_quantity", order)] == 4
    assert samples[("matterfab_order_flashed", order)] == 0
    assert samples[("matterfab_order_progress_ratio", order)] == 0.25
    assert samples[("matterfab_order_completed", order)] == 0
    assert ("process_resident_memory_bytes", ()) in samples
    status = mon.status()
    assert status["orders"][0]["order_id"] == "WO-1"
    assert status["groups"][0]["lag"] == 5


def test_page_is_self_contained_and_safe() -> None:
    lowered = PAGE.lower()
    assert "http://" not in lowered and "https://" not in lowered  # nothing from the network
    assert "/api/status" in PAGE
    assert "innerhtml" not in lowered  # API text goes in through textContent only
    assert "setInterval(refresh, 2000)" in PAGE


def test_monitor_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "REFRESH_S", "MAX_ORDERS"):
        monkeypatch.delenv(f"MATTERFAB_MONITOR_{name}", raising=False)
    s = MonitorSettings()
    assert (s.host, s.port, s.max_orders) == ("127.0.0.1", 9400, 1000)
    monkeypatch.setenv("MATTERFAB_MONITOR_PORT", "9555")
    assert MonitorSettings().port == 9555


def test_lag_cli_json_and_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        kafka.PartitionLag("mfg.images.ready", 0, 5, 5, 0),
        kafka.PartitionLag("mfg.images.ready", 1, None, 7, 7),
    ]

    async def fake(group: str | None = None) -> dict[str, list[kafka.PartitionLag]]:
        return {"matterfab-assembler": rows, "idle": []}

    async def members(groups: list[str]) -> dict[str, kafka.GroupState]:
        member = kafka.GroupMember("m-1", "station-A", "matterfab-station-A", "/10.0.0.7")
        return {"matterfab-assembler": kafka.GroupState("matterfab-assembler", "Stable", (member,))}

    monkeypatch.setattr(lag_cli, "read_lag", fake)
    monkeypatch.setattr(lag_cli, "read_members", members)

    app = typer.Typer()
    app.command()(lag_cli.lag)
    runner = CliRunner()
    done = runner.invoke(app, ["--json"])
    assert done.exit_code == 0, done.output

    doc = json.loads(done.output)
    assert doc["groups"][0] == {
        "group": "matterfab-assembler",
        "state": "Stable",
        "members": [
            {
                "instance_id": "station-A",
                "client_id": "matterfab-station-A",
                "host": "/10.0.0.7",
                "member_id": "m-1",
            }
        ],
        "lag": 7,
        "partitions": [
            {"topic": "mfg.images.ready", "partition": 0, "committed": 5, "end": 5, "lag": 0},
            {"topic": "mfg.images.ready", "partition": 1, "committed": None, "end": 7, "lag": 7},
        ],
    }
    table = runner.invoke(app, [])
    assert table.exit_code == 0, table.output
    assert "matterfab-assembler · mfg.images.ready · lag 7" in table.output
    assert (
        "matterfab-assembler · members (Stable): station-A (matterfab-station-A, 10.0.0.7)"
        in table.output
    )
    assert "idle: no committed offsets" in table.output
