"""Which stations of a line are alive, and removing the ones that departed without leaving.

A station's group membership is static (KIP-345): one that crashes and comes back under its
own id takes its partitions back at once. One that never comes back keeps them: Apache Kafka
expires it after `session.timeout.ms` (10 s here), the embedded broker (noida-db 0.2.3) never
does (measured: a SIGKILLed static or dynamic member held its group for as long as we watched,
and a new member's join waited behind it). So stations watch each other:

- every station writes its presence, `lines/<line>/stations/<station_id>.json` (a mutable
  object, overwritten every HEARTBEAT_S): state `live` (or `stopped` on a clean stop), a beat
  counter, when it was last seen, and what it flashed in the last RECENT_S;
- every station, joined or still waiting to join, looks at its group every SWEEP_S: a member
  whose presence says `stopped`, or whose beat counter has not moved for LEASE_S by the
  watcher's own clock (no wall clocks compared across PCs), departed. It is removed from the
  group by its group_instance_id (LeaveGroup v3, Kafka's `removeMembersFromConsumerGroup`):
  the group rebalances and the others take its images, uncommitted ones included.

A departed station's images are thus taken over within LEASE_S + SWEEP_S + one rebalance, on
either broker (measured on the local stack: removed 6.5 s after a SIGKILL, partitions moved
0.9 s later; a spare started after the crash adds its own start-up; stated bound 30 s,
TAKEOVER_BOUND_S, docs/stations.md). A station
that was only cut off from the bucket for LEASE_S is removed too; it rejoins by itself.
Correctness never rests on any of this: a device's final outcome is write-once
(`station_record_key`), so a device is bound once however its image is delivered.

The monitor reads the same objects (`read_presences`) to list each line's stations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel, Field, ValidationError

from matterfab import kafka
from matterfab.bucket import keys
from matterfab.config import KafkaSettings
from matterfab.messages import StationResult
from matterfab.messages.base import utcnow
from matterfab.objectstore import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.5  # how often a station rewrites its presence
LEASE_S = 6.0  # a presence unchanged this long (watcher's clock) means the station departed
SWEEP_S = 1.5  # how often a station looks at its group for departed members
RECENT_S = 300.0  # "what it flashed lately": results of the last 5 minutes
RECENT_LISTED = 20  # devices listed by name (the counts cover all of RECENT_S)
TAKEOVER_BOUND_S = 30.0  # the stated bound: LEASE_S + SWEEP_S + a rebalance, with margin
PREFIX = keys.LINES
INSTANCE_PREFIX = "station-"


def presence_key(line: str, station_id: str) -> str:
    """Object key of a station's presence."""
    return keys.presence_key(line, station_id)


def instance_id(station_id: str) -> str:
    """A station's static group membership id."""
    return f"{INSTANCE_PREFIX}{station_id}"


class RecentResult(BaseModel):
    """One device a station reported lately."""

    device_id: str
    status: Literal["flashed", "failed"]
    final: bool = True
    at: datetime


class StationPresence(BaseModel):
    """A station's presence object (`station-presence/v1`), rewritten every HEARTBEAT_S."""

    type: Literal["station-presence/v1"] = "station-presence/v1"
    station_id: str
    line: str
    group: str = Field(description="The line's consumer group")
    instance_id: str = Field(description="The station's group_instance_id")
    state: Literal["live", "stopped"]
    started_at: datetime
    seen_at: datetime = Field(description="When the station last wrote this (its clock)")
    beats: int = Field(ge=0, description="Writes since it started: watchers see it move")
    flashed_recent: int = Field(0, ge=0, description="Devices flashed in the last RECENT_S")
    failed_recent: int = Field(0, ge=0, description="Failures (final or re-queued), same window")
    recent: list[RecentResult] = Field(default_factory=list, description="Latest first")

    def status(self, now: datetime | None = None) -> str:
        """`live`, `stopped` (left cleanly) or `departed` (not seen for LEASE_S)."""
        if self.state == "stopped":
            return "stopped"
        now = now or utcnow()
        return "departed" if now - self.seen_at > timedelta(seconds=LEASE_S) else "live"


class Presence:
    """A station's own presence: what it flashed lately, written every HEARTBEAT_S."""

    def __init__(self, store: Store, station_id: str, line: str, group: str):
        self.store = store
        self.station_id = station_id
        self.line = line
        self.group = group
        self.started_at = utcnow()
        self.beats = 0
        self.recent: deque[RecentResult] = deque()
        self._failing = False

    @property
    def key(self) -> str:
        """Where the presence is written."""
        return presence_key(self.line, self.station_id)

    def record(self, results: Sequence[StationResult]) -> None:
        """Remember this station's own results (re-published outcomes of others are not)."""
        for r in results:
            if r.station_id != self.station_id:
                continue
            if any(x.device_id == r.device_id and x.at == r.at for x in self.recent):
                continue  # its own outcome re-published (a redelivered image): counted once
            self.recent.append(RecentResult(device_id=r.device_id, status=r.status,
                                            final=r.final, at=r.at))  # fmt: skip

    def snapshot(self, state: Literal["live", "stopped"] = "live") -> StationPresence:
        """The presence object as of now (results older than RECENT_S forgotten)."""
        now = utcnow()
        while self.recent and now - self.recent[0].at > timedelta(seconds=RECENT_S):
            self.recent.popleft()
        latest = list(reversed(self.recent))
        return StationPresence(
            station_id=self.station_id,
            line=self.line,
            group=self.group,
            instance_id=instance_id(self.station_id),
            state=state,
            started_at=self.started_at,
            seen_at=now,
            beats=self.beats,
            flashed_recent=sum(r.status == "flashed" for r in latest),
            failed_recent=sum(r.status == "failed" for r in latest),
            recent=latest[:RECENT_LISTED],
        )

    async def write(self, state: Literal["live", "stopped"] = "live") -> None:
        """Write the presence once (one log line when writes start or stop failing)."""
        self.beats += 1
        body = self.snapshot(state).model_dump_json().encode()
        try:
            # One attempt: the next beat is the retry, and one line says writes are failing
            # (the store's own retries would log a line per attempt, every beat).
            await self.store.put(self.key, body, "application/json", deadline_s=0)
        except Exception as exc:
            if not self._failing:
                log.warning("cannot write presence %s (%s); others may remove this station "
                            "from the line's group until it can", self.key, exc)  # fmt: skip
            self._failing = True
            return
        if self._failing:
            log.info("presence %s written again", self.key)
        self._failing = False

    async def beat(self) -> None:
        """Write the presence every HEARTBEAT_S until cancelled."""
        while True:
            await self.write()
            await asyncio.sleep(HEARTBEAT_S)


async def read_presences(store: Store, line: str | None = None) -> list[StationPresence]:
    """Every station presence in the bucket (of one line, or all), by line and station id."""
    out = []
    for key in await store.list_keys(keys.presence_prefix(line)):
        if not keys.is_presence_key(key):
            continue
        raw = await store.get_or_none(key)
        if raw is None:
            continue
        try:
            out.append(StationPresence.model_validate_json(raw))
        except ValidationError:
            log.warning("unreadable station presence %s; skipped", key)
    return sorted(out, key=lambda p: (p.line, p.station_id))


class Sweeper:
    """Removes the line group's departed members (see the module docstring).

    `departed(members, presences)` is the pure decision, fed the watcher's own clock.
    """

    def __init__(
        self,
        store: Store,
        settings: KafkaSettings,
        line: str,
        group: str,
        own_instance: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.settings = settings
        self.line = line
        self.group = group
        self.own_instance = own_instance
        self.clock = clock
        # instance id -> ((started_at, beats) last seen or None, watcher time first seen so)
        self.seen: dict[str, tuple[tuple[datetime, int] | None, float]] = {}
        self.removed: list[str] = []
        self._admin: AIOKafkaAdminClient | None = None
        self._failing = False

    def departed(
        self, members: Sequence[kafka.GroupMember], presences: Sequence[StationPresence]
    ) -> dict[str, str]:
        """Members to remove, with why: instance id -> reason."""
        now = self.clock()
        by_instance = {p.instance_id: p for p in presences}
        out: dict[str, str] = {}
        current: dict[str, tuple[tuple[datetime, int] | None, float]] = {}
        for m in members:
            inst = m.instance_id
            if not inst or inst == self.own_instance or not inst.startswith(INSTANCE_PREFIX):
                continue  # dynamic members and other software's are not ours to judge
            presence = by_instance.get(inst)
            # A restart under the same id starts counting again: its start time tells them apart.
            beats = (presence.started_at, presence.beats) if presence is not None else None
            last, since = self.seen.get(inst, (beats, now))
            if beats != last:
                since = now
            current[inst] = (beats, since)
            if presence is not None and presence.state == "stopped":
                out[inst] = "stopped without leaving the group"
            elif now - since >= LEASE_S:
                quiet = f"no sign of life for {now - since:.0f}s"
                out[inst] = quiet if presence is not None else f"{quiet} (no presence object)"
        self.seen = current
        return out

    async def sweep_once(self) -> dict[str, str]:
        """Look at the group once; remove and return its departed members."""
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                **{
                    **kafka.client_options(self.settings),
                    "client_id": f"{self.settings.client_id}-sweeper",
                }
            )
            await kafka.start(admin, self.settings, "admin client")
            self._admin = admin
        group = await kafka.describe_group(self._admin, self.group)
        if not group.members:
            self.seen = {}
            return {}
        presences = await read_presences(self.store, self.line)
        gone = self.departed(group.members, presences)
        if not gone:
            return {}
        answers = await kafka.remove_members(self._admin, self.group, gone)
        for inst, reason in gone.items():
            error = answers.get(inst)
            if error is None:
                log.warning(
                    "line %s: station %s departed (%s); removed from group %s, the others "
                    "take its images",
                    self.line,
                    inst.removeprefix(INSTANCE_PREFIX),
                    reason,
                    self.group,
                )
                self.removed.append(inst)
                self.seen.pop(inst, None)
            elif error != "UnknownMemberIdError":  # already gone: someone else removed it
                log.warning("line %s: removing departed %s failed: %s", self.line, inst, error)
        return gone

    async def run(self) -> None:
        """Sweep every SWEEP_S until cancelled; a failed sweep is retried (one line each)."""
        try:
            while True:
                try:
                    await self.sweep_once()
                    self._failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not self._failing:  # one line per outage: the runtime reports outages
                        log.info("line %s: group check failed (%s: %s); retrying every %gs",
                                 self.line, type(exc).__name__, exc, SWEEP_S)  # fmt: skip
                    self._failing = True
                    await self.close()
                await asyncio.sleep(SWEEP_S)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the admin client (reopened by the next sweep)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
