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
    """Takes an order's devices one at a time, in any order, and keeps each in its final,
    compact form (its CSV line, its JSON entry, its PNG): memory stays a few hundred bytes per
    device however the devices arrive, instead of the parsed records (20,000 devices: < 40 MB).
    """

    def __init__(self) -> None:
        self.lines: dict[int, str] = {}
        self.entries: dict[int, bytes] = {}
        self.pngs: dict[str, bytes] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, device: Mapping[str, Any], png: bytes) -> None:
        """Take one device (an onboarding record) and its QR PNG; a repeat is ignored."""
        index = device["index"]
        if index in self.entries:
            return
        row = manifest_row(device)  # once: it decodes the QR payload for the passcode
        out = io.StringIO()
        csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n").writerow(row)
        self.lines[index] = out.getvalue()
        self.entries[index] = _dumps(device_entry(device, row)).encode()
        self.pngs[device["serial_num"]] = png

    def csv(self) -> bytes:
        """`manifest.csv`: the header of DESIGN §5, one row per device, by index."""
        header = ",".join(MANIFEST_COLUMNS) + "\n"
        return (header + "".join(self.lines[i] for i in sorted(self.lines))).encode()

    def qrcodes_zip(self) -> bytes:
        """`qrcodes.zip`: `<serial_num>.png` per device."""
        return qrcodes_zip(self.pngs.items())

    def json(
        self,
        order: Mapping[str, Any],
        objects: Mapping[str, Mapping[str, Any]],
        firmware: Mapping[str, str] | None = None,
    ) -> bytes:
        """`manifest.json`: the order summary, the digest of every object, every device, and
        the order's firmware bundle (`name`, `sha256` of its bundle.json) when it names one.
        Last: it hands its device entries over to the document (call `csv` and `qrcodes_zip`
        first; the builder holds no device after).
        """
        summary = {
            "order_id": order["order_id"],
            "quantity": order["quantity"],
            "product": order["product"],
            "mfg_date": order["mfg_date"],
            "attestation_profile": order["attestation_profile"],
            "dac_storage": order.get("dac_storage", "factory-nvs"),
            "objects": {name: dict(ref) for name, ref in sorted(objects.items())},
        }
        if firmware is not None:
            summary["firmware"] = dict(firmware)
        if order.get("line") is not None:  # the line its devices' secrets are sealed to
            summary["line"] = order["line"]
        # Exactly json.dumps(whole document, sort_keys=True), written piece by piece into one
        # buffer: never the whole document as objects, nor its text twice.
        parts: dict[str, bytes | None] = {k: _dumps(v).encode() for k, v in summary.items()}
        parts["devices"] = None  # the device list, written entry by entry
        out = io.BytesIO()
        out.write(b"{")
        for n, key in enumerate(sorted(parts)):
            out.write(b"," if n else b"")
            out.write(json.dumps(key).encode() + b":")
            value = parts[key]
            if value is not None:
                out.write(value)
                continue
            out.write(b"[")
            # Each entry is dropped once written: the entries and the document are never both
            # whole in memory (20,000 devices: ~30 MB less at the peak). The builder is spent.
            for i, index in enumerate(sorted(self.entries)):
                out.write(b"," if i else b"")
                out.write(self.entries.pop(index))
            out.write(b"]")
        out.write(b"}\n")
        return out.getvalue()


def manifest_csv(devices: Iterable[Mapping[str, Any]]) -> bytes:
    """`manifest.csv` of these devices (see ManifestBuilder.csv)."""
    builder = ManifestBuilder()
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
    builder = ManifestBuilder()
    for d in devices:
        builder.add(d, b"")
    return builder.json(order, objects)
