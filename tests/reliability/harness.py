"""Tools for fault, security and bad-input tests that run the real services on the session stack.

A test module that kills services runs its OWN pipeline: `exclusive_pipeline` pauses every other
service of the stack (the session e2e pipeline shares the consumer groups, so a survivor there
would quietly do the killed service's work and hide the fault), starts ours, and at the end
stops ours and restarts what it paused, with the same argv.

`check_order` measures the invariants every fault must leave intact (issue #13: devices travel
and are stored in lots): exactly `quantity` devices, no duplicate serial / DAC serial / unique
ID; per device only what a station flashes (`partition.bin`, no `dac.der`); every device in
exactly one `dacs.lot` and one `labels.lot`, the two cut alike; one DAC per device in the
ledger's lot records (a redelivered lot may announce its DACs again, never other ones), equal
to the partition's and to the DAC its manifest ref reads; passcodes that open the verifiers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.lots import DACS, IMAGES, LABELS, LotObject, lot_key, unpack
from matterfab.matter import nvs, spake2p
from matterfab.messages import (
    DAC_LEDGER,
    DEAD_LETTER,
    ORDER_EVENTS,
    LedgerLot,
    OrderEvent,
    device_id,
    index_str,
)
from matterfab.refs import RefReader
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack, port_in_use
from tests.pipeline import PIPELINE, Services, matterfab, work_order
from tests.sealed import local_keys, open_if_sealed

PROFILE = "rel-fff1"
NS = nvs.NAMESPACE
# The allocator's lot size for our pipelines: test orders run at 1,000 iterations, where the
# default sizing (about 0.25 s of build work a lot) makes lots of 64, a few per order; at 16 an
# order is many lots (a production one at 10,000 iterations has about 59 devices a lot), so a
# kill still lands in the middle of an order's lots and between them.
LOT_ENV = {"MATTERFAB_LOT_MAX_DEVICES": "16"}


# ---- the stack's services


def ensure_profile(stack: LocalStack, name: str = PROFILE) -> str:
    """A test attestation profile for VID 0xFFF1 / PID 0x8000 in the stack's profiles folder."""
    if (stack.home / "profiles" / name / "profile.json").is_file():
        return name
    done = matterfab(
        stack, "pki", "init-test", "--vid", "0xFFF1", "--pid", "0x8000", "--name", name
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return name


class OwnPipeline(Services):
    """Services started with static group membership (`MATTERFAB_<SERVICE>_INSTANCE_ID`).

    A SIGKILLed member never leaves its group on the embedded broker, so a restart must come
    back as the same static member to get its partitions (see matterfab.runtime).
    """

    def __init__(self, stack: LocalStack, env: dict[str, str] | None = None):
        super().__init__(stack)
        self.env = dict(env or {})
        self.per_service: dict[str, dict[str, str]] = {}

    def start(self, service: str, instance: int = 1, **env: str) -> str:
        """Start (or restart) `<service>-<instance>` with its static instance ID."""
        extra = {
            **self.env,
            **self.per_service.get(service, {}),
            **env,
            f"MATTERFAB_{service.upper()}_INSTANCE_ID": f"{service}-{instance}",
        }
        return super().start(service, instance, **extra)


@contextlib.contextmanager
def exclusive_pipeline(
    stack: LocalStack,
    instance: int,
    services: tuple[str, ...] = PIPELINE,
    env: dict[str, str] | None = None,
    per_service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[OwnPipeline]:
    """Run our own pipeline (instances `<service>-<instance>`) with nothing else consuming."""
    paused: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name in stack.running_services():
        record = stack._read_pid(name)
        if record is not None:
            paused[name] = (record.argv, _matterfab_env(record.pid))
        stack.stop_service(name)
    own = OwnPipeline(stack, env)
    own.per_service = dict(per_service_env or {})
    try:
        for service in services:
            own.start(service, instance)
        yield own
    finally:
        own.stop_all()
        if not stack.is_running():
            stack.start()
        for name, (argv, env) in paused.items():
            stack.start_service(name, argv, env={**env, **_static_identity(name, argv)})


def _matterfab_env(pid: int) -> dict[str, str]:
    """The MATTERFAB_* settings a running service was started with (e.g. the session
    pipeline's lot-size cap), so that it restarts as it was, not with the defaults."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    skip = {"MATTERFAB_HOME", "MATTERFAB_KAFKA_EMBEDDED"}  # the stack sets these itself
    return {k: v for k, _, v in pairs if k.startswith("MATTERFAB_") and k not in skip}


def _static_identity(name: str, argv: list[str]) -> dict[str, str]:
    """The static group membership a paused `serve <service>` instance had (see Services.start).

    Restarted without it, the instance would rejoin as a dynamic member, and the embedded
    broker then leaves the group in CompletingRebalance for good once a static member of the
    same group leaves (measured: the session pipeline stalled after the monitor test).
    """
    if "serve" not in argv or argv.index("serve") + 1 >= len(argv):
        return {}
    service = argv[argv.index("serve") + 1]
    return {f"MATTERFAB_{service.upper()}_INSTANCE_ID": name}


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children first."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Kill:
    """What a SIGKILL left behind: the victim's descendants that outlived it (orphans)."""

    name: str
    pid: int
    orphans: list[int] = field(default_factory=list)


def sigkill(stack: LocalStack, name: str) -> Kill:
    """SIGKILL service `name` by its PID; wait until gone; reap and report orphaned workers."""
    pid = stack.running_services()[name]
    family = descendants(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), f"{name} ({pid}) survived SIGKILL"
    # Worker processes (the builder's pool) should notice their parent died and exit.
    deadline = time.monotonic() + 5
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [p for p in family if alive(p)]
    for p in orphans:  # ours (children of a service we started): do not leave them running
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return Kill(name, pid, orphans)


# ---- the bus


async def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """Log-end offset of every partition of `topic`."""
    parts = await kafka.partitions_for(settings, [topic])
    ends = await kafka.end_offsets(settings, parts)
    return {tp.partition: off for tp, off in ends.items()}


async def read_topic(
    settings: KafkaSettings, topic: str, start: dict[int, int] | None = None
) -> list[ConsumerRecord]:
    """Every record of `topic` from `start` (default: the beginning) up to its current end."""
    ends = await end_offsets(settings, topic)
    if all((start or {}).get(p, 0) >= end for p, end in ends.items()):
        return []
    cons = await kafka.topic_reader(settings, topic, dict(start or {}))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        out: list[ConsumerRecord] = []
        pending = {tp for tp in tps if (start or {}).get(tp.partition, 0) < ends[tp.partition]}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            batch = await cons.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, recs in batch.items():
                out.extend(r for r in recs if r.offset < ends[tp.partition])
            for tp in list(pending):
                if await cons.position(tp) >= ends[tp.partition]:
                    pending.discard(tp)
        assert not pending, f"could not read {topic} to its end"
        return out
    finally:
        await kafka.stop_reader(cons)


async def send(settings: KafkaSettings, topic: str, value: bytes, key: str | None) -> Any:
    """Produce one record and wait for the broker's ack; returns its RecordMetadata."""
    prod = kafka.producer(settings)
    await prod.start()
    try:
        return await prod.send_and_wait(topic, value, key=key.encode() if key else None)
    finally:
        await prod.stop()


async def submit(settings: KafkaSettings, order: dict[str, Any] | bytes, key: str) -> Any:
    """Publish a work order (dict or raw bytes) to mfg.work-orders."""
    raw = order if isinstance(order, bytes) else json.dumps(order).encode()
    return await send(settings, "mfg.work-orders", raw, key)


async def order_events(
    settings: KafkaSettings, order_id: str, since: dict[int, int] | None = None
) -> list[OrderEvent]:
    """The order's events on mfg.order-events (from `since`)."""
    records = await read_topic(settings, ORDER_EVENTS, since)
    return [
        OrderEvent.model_validate_json(r.value)
        for r in records
        if r.key is not None and r.key.decode() == order_id
    ]


async def wait_final(
    settings: KafkaSettings, order_id: str, since: dict[int, int] | None, timeout: float = 240
) -> OrderEvent:
    """The order's first completed / rejected / failed event; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in await order_events(settings, order_id, since):
            if ev.status in ("completed", "rejected", "failed"):
                return ev
        await asyncio.sleep(1.0)
    raise AssertionError(f"order {order_id}: no final event within {timeout:.0f}s")


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Await `predicate()` (async) until truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def count_objects(store: ObjectStore, order_id: str, name: str) -> int:
    """How many devices of the order have a stored `name` (e.g. partition.bin): a piece of
    the order's images.lot objects (issue #26), or a per-device object (re-issues)."""
    keys = await store.list_keys(f"orders/{order_id}/devices/")
    per_device = {k.split("/")[-2] for k in keys if k.endswith(f"/{name}")}
    pieces = {
        index_str(e.index)
        for lot in (await lot_objects(store, order_id, IMAGES)).values()
        for e in lot.entries
        if e.name == name
    }
    return len(per_device | pieces)


async def dead_letters(settings: KafkaSettings, since: dict[int, int] | None = None) -> list[Any]:
    """Dead letters (parsed JSON) from `since`."""
    return [json.loads(r.value) for r in await read_topic(settings, DEAD_LETTER, since)]


def rel_order(order_id: str, quantity: int, **overrides: Any) -> dict[str, Any]:
    """A valid, fast (iteration_count 1000) work order on the reliability profile."""
    return work_order(order_id, quantity, PROFILE, **overrides)


# ---- lots


def record_devices(record: ConsumerRecord) -> list[str]:
    """The device_ids a device-topic record stands for: every device of a lot message
    (`mfg.devices.allocated` / `.attested`), else its key (`mfg.images.ready`)."""
    with contextlib.suppress(ValueError):
        doc = json.loads(record.value)
        if isinstance(doc, dict) and isinstance(doc.get("devices"), list):
            return [device_id(str(doc["order_id"]), int(d["index"])) for d in doc["devices"]]
    return [record.key.decode()] if record.key else []


def of_order(record: ConsumerRecord, order_id: str) -> bool:
    """Whether a device-topic record is about this order (keys are device or lot ids)."""
    return record.key is not None and record.key.decode().split("/")[0] == order_id


async def order_lots(
    settings: KafkaSettings, topic: str, order_id: str, since: dict[int, int] | None = None
) -> dict[int, list[int]]:
    """The order's lots as a lot topic carries them: first index -> device indices."""
    out: dict[int, list[int]] = {}
    for r in await read_topic(settings, topic, since):
        if of_order(r, order_id):
            indices = sorted(int(d["index"]) for d in json.loads(r.value)["devices"])
            out[indices[0]] = indices
    return out


async def wait_lots(
    settings: KafkaSettings, topic: str, order_id: str, quantity: int, since: dict[int, int]
) -> dict[int, list[int]]:
    """The order's lots on `topic`, once they cover all `quantity` devices."""

    async def whole() -> dict[int, list[int]] | None:
        found = await order_lots(settings, topic, order_id, since)
        return found if sum(len(v) for v in found.values()) >= quantity else None

    lots_: dict[int, list[int]] = await wait_until(whole, 120, f"{order_id}'s lots on {topic}")
    return lots_


async def lot_objects(store: ObjectStore, order_id: str, name: str) -> dict[int, LotObject]:
    """Every lot object `name` (dacs.lot, labels.lot) of the order, parsed, by first index."""
    keys = [k for k in await store.list_keys(f"orders/{order_id}/lots/") if k.endswith(f"/{name}")]
    bodies = await asyncio.gather(*(store.get(k) for k in keys))
    return {int(k.split("/")[-2]): unpack(b, k) for k, b in zip(keys, bodies, strict=True)}


async def issued_dacs(store: ObjectStore, order_id: str) -> dict[str, str]:
    """sha256 of every DAC the order's dacs.lot objects hold, by index (7 digits).

    AssertionError if a device has a DAC in two lot objects: two DACs issued for one device.
    """
    out: dict[str, str] = {}
    for first, lot in sorted((await lot_objects(store, order_id, DACS)).items()):
        for e in lot.entries:
            index = index_str(e.index)
            assert index not in out, f"device {index} has a DAC in two dacs.lot (one at {first})"
            out[index] = e.sha256
    return out


async def count_dacs(store: ObjectStore, order_id: str) -> int:
    """How many DACs the order's dacs.lot objects hold."""
    return len(await issued_dacs(store, order_id))


# ---- the invariants

# Every file of a device is a piece of a lot object: dac.der, qrcode.png, onboarding.json since
# issue #13, and what a station flashes (partition.bin, nvs_keys.bin, esp_secure_cert.bin, in
# images.lot) since issue #26. Nothing is stored per device by the build path.
LABEL_PIECES = ("qrcode.png", "onboarding.json")


@dataclass
class OrderCheck:
    """What check_order measured."""

    devices: int
    lost: int
    duplicates: int
    ledger_entries: int  # DACs announced on the ledger (a redelivered lot announces again)
    ledger_lots: int  # LedgerLot records of the order
    lots: int
    redelivered: dict[str, int]


async def manifest_rows(store: ObjectStore, order_id: str) -> list[dict[str, str]]:
    """The rows of an order's manifest.csv."""
    raw = await store.get(f"orders/{order_id}/manifest.csv")
    return list(csv.DictReader(io.StringIO(raw.decode())))


async def manifest_devices(store: ObjectStore, order_id: str) -> dict[str, dict[str, Any]]:
    """The device entries of an order's manifest.json (row + refs), by index (7 digits)."""
    doc = json.loads(await store.get(f"orders/{order_id}/manifest.json"))
    return {index_str(int(d["index"])): d for d in doc["devices"]}


def lot_runs(lots_: dict[int, LotObject], pieces: tuple[str, ...]) -> dict[int, list[int]]:
    """first index -> the device indices a lot object holds `pieces` of, each exactly once."""
    runs: dict[int, list[int]] = {}
    for first, lot in lots_.items():
        names = Counter((e.index, e.name) for e in lot.entries)
        twice = [k for k, n in names.items() if n > 1]
        assert not twice, f"lot {first:07d} lists a piece twice: {twice[:3]}"
        indices = sorted({e.index for e in lot.entries})
        for i in indices:
            have = {e.name for e in lot.entries if e.index == i}
            assert have == set(pieces), f"lot {first:07d}: device {i} has {sorted(have)}"
        assert indices == list(range(first, first + len(indices))), (
            f"lot {first:07d} is not a run of devices from its first: {indices[:5]}..."
        )
        runs[first] = indices
    return runs


def assert_partitioned(runs: dict[int, list[int]], quantity: int, what: str) -> None:
    """The lots cover devices 0..quantity-1, each device in exactly one lot."""
    seen = Counter(i for indices in runs.values() for i in indices)
    twice = sorted(i for i, n in seen.items() if n > 1)
    assert not twice, f"devices in two {what} objects: {twice[:5]}"
    assert set(seen) == set(range(quantity)), (
        f"{what}: devices covered {len(seen)}, expected {quantity}; "
        f"outside the order: {sorted(set(seen) - set(range(quantity)))[:5]}"
    )


async def check_order(
    stack: LocalStack,
    store: ObjectStore,
    settings: KafkaSettings,
    order_id: str,
    quantity: int,
    since: dict[str, dict[int, int]] | None = None,
    verify_cli: bool = True,
) -> OrderCheck:
    """Assert every invariant of a completed order; return the measured numbers.

    `since`: per device topic, offsets from which to count redeliveries (devices of this order
    carried more than once; a lot record carries each of its devices).
    """
    verifying = (
        asyncio.create_task(asyncio.to_thread(matterfab, stack, "verify", order_id))
        if verify_cli
        else None
    )
    rows = await manifest_rows(store, order_id)
    assert [r["index"] for r in rows] == [f"{i:07d}" for i in range(quantity)]
    entries = await manifest_devices(store, order_id)
    assert sorted(entries) == [r["index"] for r in rows], "manifest.json devices != manifest.csv"
    duplicates = 0
    for col in ("serial_num", "dac_serial", "rd_id_uid", "device_id"):
        counts = Counter(r[col] for r in rows)
        duplicates += sum(n - 1 for n in counts.values())
        assert duplicates == 0, f"{col} repeated: {[v for v, n in counts.items() if n > 1][:5]}"

    # Nothing per device (re-issued generations aside): every file of the build is in a lot.
    keys = await store.list_keys(f"orders/{order_id}/devices/")
    stray = sorted(k for k in keys if "/gen-" not in k)
    assert not stray, f"per-device objects that belong in lots: {stray[:5]}"

    # Lots: one dacs.lot, images.lot and labels.lot per lot, cut alike, every device in one.
    dac_lots = await lot_objects(store, order_id, DACS)
    label_lots = await lot_objects(store, order_id, LABELS)
    image_lots = await lot_objects(store, order_id, IMAGES)
    dac_runs = lot_runs(dac_lots, ("dac.der",))
    assert_partitioned(dac_runs, quantity, DACS)
    label_runs = lot_runs(label_lots, LABEL_PIECES)
    assert_partitioned(label_runs, quantity, LABELS)
    image_runs = lot_runs(image_lots, ("partition.bin",))
    assert_partitioned(image_runs, quantity, IMAGES)
    assert dac_runs == label_runs == image_runs, "the signer's and builder's lots differ"
    lot_sha = {
        lot_key(order_id, first, DACS): hashlib.sha256(lot.body).hexdigest()
        for first, lot in dac_lots.items()
    }

    # The ledger: every DAC serial once per device. A redelivered lot re-announces its lot
    # record with the same serials (adopted from dacs.lot); a second serial is a second DAC.
    ledger: dict[str, set[str]] = defaultdict(set)
    owners: dict[str, set[str]] = defaultdict(set)
    sha: dict[str, set[str]] = defaultdict(set)
    announced = records = 0
    for rec in await read_topic(settings, DAC_LEDGER):
        doc = json.loads(rec.value)
        if not isinstance(doc, dict) or doc.get("order_id") != order_id:
            continue
        lot = LedgerLot.model_validate(doc)
        records += 1
        ref = lot.dacs_lot
        assert lot_sha.get(ref.key) == ref.sha256, f"ledger lot {lot.lot_id}: {ref.key} differs"
        for dac in lot.dacs:
            announced += 1
            ledger[dac.device_id].add(dac.dac_serial)
            owners[dac.dac_serial].add(dac.device_id)
            sha[dac.dac_serial].add(dac.dac_sha256)
    assert set(ledger) == {r["device_id"] for r in rows}, "ledger devices differ from manifest"
    multi = {d: s for d, s in ledger.items() if len(s) != 1}
    assert not multi, f"devices with several DACs in the ledger: {list(multi.items())[:3]}"
    shared = {s: d for s, d in owners.items() if len(d) != 1}
    assert not shared, f"DAC serials of several devices: {list(shared.items())[:3]}"
    assert len(owners) == quantity, f"{len(owners)} distinct DAC serials, expected {quantity}"
    assert all(len(v) == 1 for v in sha.values()), "a DAC serial with two certificates"

    reader = RefReader(store)
    sem = asyncio.Semaphore(16)
    line_keys = local_keys(stack.home)  # line local's: what a station opens sealed objects with

    async def one(row: dict[str, str]) -> None:
        entry = entries[row["index"]]
        refs = entry["objects"]
        async with sem:
            part, dac, onboarding, _png = await asyncio.gather(
                reader.read(refs["partition"]),
                reader.read(refs["dac"]),
                reader.read(refs["onboarding"]),
                reader.read(refs["qrcode"]),
            )
            keys_obj = await reader.read(refs["nvs_keys"]) if "nvs_keys" in refs else None
        part = open_if_sealed(part, line_keys)
        keys_obj = None if keys_obj is None else open_if_sealed(keys_obj, line_keys)
        index = int(row["index"])
        first = max(f for f in dac_runs if f <= index)
        assert refs["dac"]["key"] == lot_key(order_id, first, DACS), f"{refs['dac']}"
        assert refs["dac"].get("offset") is not None, "a DAC ref without its byte range"
        assert dac_lots[first].piece(index, "dac.der") == dac, "dacs.lot piece != manifest ref"
        decoded = nvs.decode_partition(part, keys=keys_obj)[NS]
        assert decoded["dac-cert"][1] == dac, f"{row['device_id']}: partition DAC != its ref"
        (serial,) = ledger[row["device_id"]]
        assert serial == row["dac_serial"]
        assert sha[serial] == {hashlib.sha256(dac).hexdigest()}, "ledger DAC != stored DAC"
        assert decoded["serial-num"][1] == row["serial_num"]
        label = json.loads(onboarding)
        assert (label["serial_num"], label["dac_serial"], label["qr_payload"]) == (
            row["serial_num"],
            row["dac_serial"],
            row["qr_payload"],
        ), f"{row['device_id']}: onboarding.json differs from the manifest"
        ok = spake2p.verify_verifier(
            int(row["passcode"]),
            base64.b64decode(str(decoded["salt"][1])),
            int(decoded["iteration-count"][1]),
            base64.b64decode(str(decoded["verifier"][1])),
        )
        assert ok, f"{row['device_id']}: manifest passcode does not open the partition verifier"

    await asyncio.gather(*(one(r) for r in rows))
    if verifying is not None:
        done = await verifying
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "every artifact verified" in done.stdout

    redelivered: dict[str, int] = {}
    for topic, start in (since or {}).items():
        counts = Counter(
            d
            for r in await read_topic(settings, topic, start)
            if of_order(r, order_id)
            for d in record_devices(r)
        )
        redelivered[topic] = sum(n - 1 for n in counts.values())
        assert len(counts) == quantity, f"{topic}: {len(counts)} devices, expected {quantity}"
    return OrderCheck(
        len(rows), quantity - len(rows), duplicates, announced, records, len(dac_runs), redelivered
    )


# ---- the broker's hard death


@dataclass
class BrokerState:
    """What the broker holds: its topics, records per topic, committed offsets per group."""

    topics: list[str]
    records: dict[str, int]  # topic -> sum of log-end offsets
    committed: dict[str, int]  # group -> sum of committed offsets

    def lost_since(self, before: BrokerState) -> dict[str, Any]:
        """What `before` had that this state has not (records and offsets, summed)."""
        return {
            "topics": sorted(set(before.topics) - set(self.topics)),
            "records": {
                t: n - self.records.get(t, 0)
                for t, n in before.records.items()
                if n > self.records.get(t, 0)
            },
            "committed": {
                g: n - self.committed.get(g, 0)
                for g, n in before.committed.items()
                if n > self.committed.get(g, 0)
            },
        }


async def broker_state(settings: KafkaSettings) -> BrokerState:
    """The broker's topics, records and committed offsets now."""
    async with kafka.admin(settings) as client:
        topics = sorted(t for t in await client.list_topics() if t.startswith("mfg."))
    parts = await kafka.partitions_for(settings, topics)
    ends = await kafka.end_offsets(settings, parts)
    records: dict[str, int] = defaultdict(int)
    for tp, off in ends.items():
        records[tp.topic] += off
    committed: dict[str, int] = {}
    for group in await kafka.list_groups(settings):
        if group.startswith("matterfab-"):
            offsets = await kafka.committed_offsets(settings, group)
            committed[group] = sum(offsets.values())
    return BrokerState(topics, dict(records), committed)


def sigkill_broker(stack: LocalStack) -> None:
    """SIGKILL the stack's broker by its PID (a power cut: no snapshot); wait until gone."""
    pid = stack._live_pid("kafka")
    assert pid is not None, "the broker is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), f"broker ({pid}) survived SIGKILL"
    # Its port can answer a moment longer (sockets closing); `make up` checks it is free.
    while port_in_use(stack.ports.kafka) and time.monotonic() < deadline + 20:
        time.sleep(0.1)
    assert not port_in_use(stack.ports.kafka), f"port {stack.ports.kafka} still answers"
