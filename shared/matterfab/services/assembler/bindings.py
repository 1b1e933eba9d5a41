"""Pure bindings assembly: final station outcomes → `bindings.csv`, `bindings-failed.csv`.

`bindings.csv` keeps the columns of DESIGN §5 (`device_id,serial_num,station_id,mac,
flashed_at`) and then `dac_serial,dac_sha256` (the DAC a device-key device was bound with; empty
otherwise), one row per device with a final outcome, by index. A device that failed for good
has an empty `mac` and `flashed_at` (it was never flashed) and the station that gave up; why it
failed is in `bindings-failed.csv`, which lists only those devices. Bytes are deterministic for
a given set of outcomes, so two assemblers writing the same state write the same objects.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

from matterfab.messages import StationResult

# DESIGN §5's five, then (dac_storage device-key) the DAC the station wrote to the device.
BINDINGS_COLUMNS = (
    "device_id",
    "serial_num",
    "station_id",
    "mac",
    "flashed_at",
    "dac_serial",
    "dac_sha256",
)
FAILED_COLUMNS = ("device_id", "serial_num", "station_id", "reason", "attempts", "requeues", "at")


def timestamp(at: datetime) -> str:
    """A UTC time as written in bindings: `2026-11-21T10:15:02.123Z`."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _by_index(outcomes: Iterable[StationResult]) -> list[StationResult]:
    return sorted(outcomes, key=lambda r: r.index)


def bindings_csv(outcomes: Iterable[StationResult]) -> bytes:
    """`bindings.csv`: every device with a final outcome; failed ones without mac and time."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BINDINGS_COLUMNS)
    for r in _by_index(outcomes):
        flashed = r.status == "flashed"
        writer.writerow(
            (
                r.device_id,
                r.serial_num,
                r.station_id,
                r.mac if flashed and r.mac else "",
                timestamp(r.at) if flashed else "",
                r.dac_serial if flashed and r.dac_serial else "",
                r.dac_sha256 if flashed and r.dac_sha256 else "",
            )
        )
    return out.getvalue().encode()


def failed_csv(outcomes: Iterable[StationResult]) -> bytes:
    """`bindings-failed.csv`: the devices that failed for good, with the last reason."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FAILED_COLUMNS)
    for r in _by_index(outcomes):
        if r.status == "failed":
            writer.writerow(
                (
                    r.device_id,
                    r.serial_num,
                    r.station_id,
                    r.reason or "",
                    r.attempts,
                    r.requeues,
                    timestamp(r.at),
                )
            )
    return out.getvalue().encode()


def duplicate_macs(outcomes: Iterable[StationResult]) -> dict[str, list[str]]:
    """MACs bound to more than one flashed device: mac → the device_ids, sorted."""
    devices: dict[str, set[str]] = defaultdict(set)
    for r in outcomes:
        if r.status == "flashed" and r.mac:
            devices[r.mac].add(r.device_id)
    return {mac: sorted(ids) for mac, ids in sorted(devices.items()) if len(ids) > 1}


def duplicate_message(mac: str, device_ids: Iterable[str]) -> str:
    """The error text of one MAC bound to several devices."""
    return f"{mac} is bound to more than one device: {', '.join(sorted(device_ids))}"


def bound(outcomes: Iterable[StationResult]) -> int:
    """Flashed devices with the MAC read from them (their binding is complete)."""
    return sum(1 for r in outcomes if r.status == "flashed" and r.mac)


def counts(outcomes: Iterable[StationResult]) -> tuple[int, int]:
    """(flashed, failed for good)."""
    flashed = failed = 0
    for r in outcomes:
        if r.status == "flashed":
            flashed += 1
        else:
            failed += 1
    return flashed, failed
