"""Stations watching each other (services/station/presence.py), the monitor's station rows and
the message of a consumer that cannot join: pure logic, no broker (the real-broker side is in
tests/integration/test_station_groups.py and tests/e2e/test_station_churn.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.messages import IMAGES_READY, ImageReady, StationResult
from matterfab.messages.base import utcnow
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import BatchSpec, ServiceSpec, join_stalled_message
from matterfab.services.monitor.app import station_rows
from matterfab.services.station import presence

LEASE = presence.LEASE_S
SETTINGS = KafkaSettings(bootstrap="kafka:9092")
GROUP = "matterfab-station-l1"


def member(instance: str | None, client: str = "c") -> kafka.GroupMember:
    return kafka.GroupMember(f"{client}-id", instance, client, "/10.0.0.1")


STARTED = utcnow() - timedelta(minutes=5)


def seen(
    station: str, beats: int, state: str = "live", ago_s: float = 0.0, started: Any = STARTED
) -> Any:
    now = utcnow()
    return presence.StationPresence(
        station_id=station,
        line="l1",
        group=GROUP,
        instance_id=presence.instance_id(station),
        state=state,
        started_at=started,
        seen_at=now - timedelta(seconds=ago_s),
        beats=beats,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sweeper(clock: Clock) -> presence.Sweeper:
    own = presence.instance_id("me")
    return presence.Sweeper(MemoryObjectStore(), SETTINGS, "l1", GROUP, own, clock=clock)


def test_a_member_whose_presence_moves_stays_and_one_that_stops_moving_departs() -> None:
    clock = Clock()
    sw = sweeper(clock)
    members = [member("station-a"), member("station-b"), member("station-me")]
    assert sw.departed(members, [seen("a", 1), seen("b", 7)]) == {}
    clock.now += presence.LEASE_S - 1
    assert sw.departed(members, [seen("a", 5), seen("b", 7)]) == {}  # b quiet for 9 s only
    clock.now += 1
    gone = sw.departed(members, [seen("a", 6), seen("b", 7)])
    assert gone == {"station-b": f"no sign of life for {LEASE:.0f}s"}


def test_the_lease_runs_on_the_watchers_clock_not_the_presence_timestamps() -> None:
    clock = Clock()
    sw = sweeper(clock)
    members = [member("station-a")]
    # Written "an hour ago" by a PC whose clock is off, but its beats move: alive.
    for beats in range(1, 8):
        assert sw.departed(members, [seen("a", beats, ago_s=3600)]) == {}
        clock.now += presence.HEARTBEAT_S


def test_stopped_and_missing_presences_and_members_that_are_not_stations() -> None:
    clock = Clock()
    sw = sweeper(clock)
    members = [member("station-a"), member("station-x"), member(None), member("other-app")]
    # a said it stopped: gone at once; x has no presence: gone once quiet for the lease.
    assert sw.departed(members, [seen("a", 3, state="stopped")]) == {
        "station-a": "stopped without leaving the group"
    }
    clock.now += presence.LEASE_S
    gone = sw.departed(members, [seen("a", 3, state="stopped")])
    assert gone == {
        "station-a": "stopped without leaving the group",
        "station-x": f"no sign of life for {LEASE:.0f}s (no presence object)",
    }  # dynamic members and other software's static ones are never judged


def test_a_member_that_comes_back_starts_a_new_lease() -> None:
    clock = Clock()
    sw = sweeper(clock)
    assert sw.departed([member("station-a")], [seen("a", 4)]) == {}
    clock.now += 30
    assert sw.departed([], [seen("a", 4)]) == {}  # removed (or left): forgotten
    clock.now += 30
    assert sw.departed([member("station-a")], [seen("a", 4)]) == {}  # back: watched afresh
    clock.now += presence.LEASE_S - 1
    # Restarted under its own id, counting from 1 again up to the very count seen before.
    restarted = seen("a", 4, started=STARTED + timedelta(minutes=1))
    assert sw.departed([member("station-a")], [restarted]) == {}
    clock.now += presence.LEASE_S - 1
    assert sw.departed([member("station-a")], [restarted]) == {}


async def test_presence_records_own_results_and_forgets_old_ones() -> None:
    store = MemoryObjectStore()
    mine = presence.Presence(store, "a", "l1", GROUP)

    def result(index: int, station: str, status: str, ago_s: float = 0) -> StationResult:
        return StationResult(
            order_id="O-1",
            device_id=f"O-1/{index:07d}",
            index=index,
            serial_num=f"SN{index}",
            station_id=station,
            line="l1",
            status=status,
            mac="02:00:00:00:00:01" if status == "flashed" else None,
            final=status == "flashed",
            at=utcnow() - timedelta(seconds=ago_s),
        )

    mine.record([result(0, "a", "flashed", ago_s=presence.RECENT_S + 5)])
    again = result(1, "a", "flashed")
    mine.record([again, result(2, "b", "flashed"), result(3, "a", "failed")])
    mine.record([again])  # its own outcome re-published for a redelivered image
    await mine.write()
    [got] = await presence.read_presences(store, "l1")
    assert (got.station_id, got.state, got.beats, got.instance_id) == ("a", "live", 1, "station-a")
    assert (got.flashed_recent, got.failed_recent) == (1, 1)
    assert [r.device_id for r in got.recent] == ["O-1/0000003", "O-1/0000001"]  # latest first
    assert got.status() == "live"
    await mine.write("stopped")
    [got] = await presence.read_presences(store)
    assert (got.beats, got.status()) == (2, "stopped")
    assert got.status(got.seen_at + timedelta(seconds=presence.LEASE_S + 1)) == "stopped"
    await presence.Presence(store, "b", "l1", GROUP).write()
    assert [p.station_id for p in await presence.read_presences(store, "l1")] == ["a", "b"]
    assert await presence.read_presences(store, "l2") == []


def test_monitor_rows_say_live_stopped_departed_and_who_the_group_still_holds() -> None:
    now = utcnow()
    presences = [seen("a", 3), seen("b", 9, ago_s=60), seen("c", 2, state="stopped", ago_s=60)]
    holds = kafka.GroupState(
        GROUP,
        "CompletingRebalance",
        (member("station-a"), member("station-b"), member("station-z")),
    )
    rows = station_rows(presences, {GROUP: holds}, now)
    got = {r["station_id"]: (r["status"], r["in_group"]) for r in rows}
    assert got == {
        "a": ("live", True),
        "b": ("departed", True),  # dead, not yet removed: its share is stalled
        "c": ("stopped", False),
        "z": ("unknown", True),  # a member with no presence object
    }
    assert [r["line"] for r in rows] == ["l1"] * 4
    old = seen("d", 1, ago_s=2 * 86_400)
    assert [r["station_id"] for r in station_rows([old], {}, now)] == []


def _spec(label: str = "line l1") -> ServiceSpec[Any]:
    async def handle(msg: Any) -> list[Any]:
        return []

    return BatchSpec("station", IMAGES_READY, ImageReady, GROUP, handle, group_label=label)


def test_join_stalled_message_names_the_group_and_what_it_waits_for() -> None:
    waiting = kafka.GroupState(
        GROUP, "CompletingRebalance", (member("station-SWAP-B"), member("station-SWAP-A"))
    )
    text = join_stalled_message(_spec(), waiting, "station-SWAP-B", SETTINGS)
    assert text == (
        "line l1 (group matterfab-station-l1): waiting for departed member station-SWAP-A "
        "(group CompletingRebalance until it rejoins or is removed; Kafka at kafka:9092 answers)"
    )
    two = kafka.GroupState(GROUP, "PreparingRebalance", (member("station-x"), member("station-y")))
    text = join_stalled_message(_spec(""), two, "station-me", SETTINGS)
    assert text.startswith(
        "matterfab-station-l1: waiting for departed members station-x, station-y (group "
        "PreparingRebalance until they rejoin or are removed"
    )
    stable = kafka.GroupState(GROUP, "Stable", ())
    text = join_stalled_message(_spec(), stable, "station-me", SETTINGS)
    assert text == (
        "line l1 (group matterfab-station-l1): not joined within 10s (group Stable, 0 other "
        "members; Kafka at kafka:9092 answers)"
    )
    assert "unreachable" not in text
