"""Pure manifest assembly: rows → `manifest.csv`, `manifest.json`, `qrcodes.zip` bytes.

Deterministic by design (rows sorted by index, fixed ZIP timestamps, sorted JSON keys): two
assemblers finishing the same order write identical bytes, which write-once storage accepts.
Each device's refs are copied as they came (a piece of a lot object keeps its `offset`); an
absent field is left out, never written as null.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

from matterfab.messages.onboarding import MANIFEST_COLUMNS, OnboardingRecord

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time ZIP can store: no wall clock in the bytes
# Chunk entries hold a record's onboarding.json plus these: not record fields.
NOT_RECORD = ("onboarding", "qrcode_png_b64")


def manifest_row(device: Mapping[str, Any]) -> dict[str, Any]:
    """One manifest row from a device's chunk entry (its onboarding record plus refs)."""
    record = {k: v for k, v in device.items() if k not in NOT_RECORD}
    return OnboardingRecord.model_validate(record).manifest_row()


def object_ref(ref: Mapping[str, Any]) -> dict[str, Any]:
    """A ref as the manifest gives it: key, sha256, size, and `offset` only for a lot's piece."""
    return {k: v for k, v in ref.items() if v is not None}


def device_entry(device: Mapping[str, Any], row: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A device's entry in `manifest.json`: its row plus the refs of all its objects."""
    entry = dict(row if row is not None else manifest_row(device))
    entry["objects"] = {name: object_ref(ref) for name, ref in sorted(device["objects"].items())}
    entry["objects"]["onboarding"] = object_ref(device["onboarding"])
    return entry


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ManifestBuilder:
    """Takes an order's devices one at a time and writes them straight into the documents.

    `manifest.csv` and the device list of `manifest.json` are sorted by index, so each device
    is written the moment every device before it has been: devices that come in index order
    (the assembler reads its chunks by their first index) cost their final bytes only, never
    a parsed record nor a per-device object. Devices that come early wait, compact (their CSV
    line and JSON entry), until the gap before them fills; devices in any order still give the
    same bytes. The QR PNGs are kept by serial number for `qrcodes.zip` (~250 bytes each).
    20,000 devices: the two documents plus the PNGs, instead of every entry held apart and the
    document built after.
    """

    def __init__(self, order: Mapping[str, Any] | None, firmware: Mapping[str, str] | None = None):
        """A builder for `order`'s manifest (None: its CSV only, as `manifest_csv`)."""
        self._summary = None if order is None else _summary(order, firmware)
        self._csv = io.BytesIO()
        self._csv.write((",".join(MANIFEST_COLUMNS) + "\n").encode())
        self._json = io.BytesIO()  # manifest.json up to the end of its device list
        self._json.write(b"" if self._summary is None else _head(self._summary))
        self._seen: set[int] = set()
        self._next = 0  # the lowest index not written yet; every written one is below it
        self._waiting: dict[int, tuple[bytes, bytes]] = {}  # index -> (CSV line, JSON entry)
        self._written = 0
        self.pngs: dict[str, bytes] = {}

    def __contains__(self, index: int) -> bool:
        return index in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def waiting(self) -> int:
        """Devices held apart because a lower index has not come yet."""
        return len(self._waiting)

    def add(self, device: Mapping[str, Any], png: bytes) -> None:
        """Take one device (an onboarding record) and its QR PNG; a repeat is ignored."""
        index = device["index"]
        if index in self._seen:
            return
        self._seen.add(index)
        row = manifest_row(device)  # once: it decodes the QR payload for the passcode
        out = io.StringIO()
        csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n").writerow(row)
        self._waiting[index] = (out.getvalue().encode(), _dumps(device_entry(device, row)).encode())
        self.pngs[device["serial_num"]] = png
        self._write_ready()

    def _write_ready(self) -> None:
        """Write the waiting devices that no unwritten index precedes (lowest first)."""
        while self._next in self._waiting:
            self._write(self._waiting.pop(self._next))
            self._next += 1

    def _write(self, device: tuple[bytes, bytes]) -> None:
        line, entry = device
        self._csv.write(line)
        self._json.write(b"," if self._written else b"")
        self._json.write(entry)
        self._written += 1

    def _write_rest(self) -> None:
        """Every device still waiting (indices with gaps before them), lowest first."""
        for index in sorted(self._waiting):
            self._write(self._waiting.pop(index))

    def csv(self) -> bytes:
        """`manifest.csv`: the header of DESIGN §5, one row per device, by index."""
        self._write_rest()
        return self._csv.getvalue()

    def qrcodes_zip(self) -> bytes:
        """`qrcodes.zip`: `<serial_num>.png` per device."""
        return qrcodes_zip(self.pngs.items())

    def json(self, objects: Mapping[str, Mapping[str, Any]]) -> bytes:
        """`manifest.json`: the order summary, the digest of every object (`objects`: those
        made beside it, as csv and zip), every device, and the order's firmware bundle
        (`name`, `sha256` of its bundle.json) when it names one. Exactly json.dumps(document,
        sort_keys=True): the keys before `devices` were written first, the rest now. Last: the
        builder holds no document after (call `csv` and `qrcodes_zip` first).
        """
        if self._summary is None:
            raise ValueError("a manifest builder made without its order writes no manifest.json")
        self._write_rest()
        summary = {**self._summary, "objects": {n: dict(r) for n, r in sorted(objects.items())}}
        self._json.write(_tail(summary))
        body, self._json = self._json.getvalue(), io.BytesIO()  # the buffer itself, no copy
        return body


_LIST = "devices"  # the summary's keys sort around it: those before are written first


def _summary(order: Mapping[str, Any], firmware: Mapping[str, str] | None) -> dict[str, Any]:
    """The order's summary fields of manifest.json (`objects` is added when they are made)."""
    summary: dict[str, Any] = {
        "order_id": order["order_id"],
        "quantity": order["quantity"],
        "product": order["product"],
        "mfg_date": order["mfg_date"],
        "attestation_profile": order["attestation_profile"],
        "dac_storage": order.get("dac_storage", "factory-nvs"),
    }
    if firmware is not None:
        summary["firmware"] = dict(firmware)
    if order.get("line") is not None:  # the line its devices' secrets are sealed to
        summary["line"] = order["line"]
    return summary


def _head(summary: Mapping[str, Any]) -> bytes:
    """The document up to its device list's first entry: `{` and the keys sorting before."""
    before = [k for k in sorted(summary) if k < _LIST]
    fields = [json.dumps(k) + ":" + _dumps(summary[k]) for k in before]
    return ("{" + "".join(f + "," for f in fields) + json.dumps(_LIST) + ":[").encode()


def _tail(summary: Mapping[str, Any]) -> bytes:
    """The document after its device list: the keys sorting after it, and `}`."""
    after = [k for k in sorted(summary) if k > _LIST]
    fields = ["," + json.dumps(k) + ":" + _dumps(summary[k]) for k in after]
    return ("]" + "".join(fields) + "}\n").encode()


def manifest_csv(devices: Iterable[Mapping[str, Any]]) -> bytes:
    """`manifest.csv` of these devices (see ManifestBuilder.csv)."""
    builder = ManifestBuilder(None)
    for d in devices:
        builder.add(d, b"")
    return builder.csv()


def qrcodes_zip(pngs: Iterable[tuple[str, bytes]]) -> bytes:
    """`qrcodes.zip`: `<serial_num>.png` per device (stored, PNGs are compressed already)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for serial, png in sorted(pngs):
            if not png:  # a dynamic-passcode device: no code, no label
                continue
            info = zipfile.ZipInfo(f"{serial}.png", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, png)
    return buf.getvalue()


def manifest_json(
    order: Mapping[str, Any],
    devices: Iterable[Mapping[str, Any]],
    objects: Mapping[str, Mapping[str, Any]],
) -> bytes:
    """`manifest.json` of these devices (see ManifestBuilder.json)."""
    builder = ManifestBuilder(order)
    for d in devices:
        builder.add(d, b"")
    return builder.json(objects)
