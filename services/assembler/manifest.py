"""Pure manifest assembly: rows → `manifest.csv`, `manifest.json`, `qrcodes.zip` bytes.

Deterministic by design (rows sorted by index, fixed ZIP timestamps, sorted JSON keys): two
assemblers finishing the same order write identical bytes, which write-once storage accepts.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

from matterfab.matter import payload

MANIFEST_COLUMNS = (
    "index",
    "device_id",
    "serial_num",
    "vendor_id",
    "product_id",
    "discriminator",
    "passcode",
    "qr_payload",
    "manual_code",
    "rd_id_uid",
    "dac_serial",
    "partition_key",
    "partition_sha256",
)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time ZIP can store: no wall clock in the bytes


def manifest_row(device: Mapping[str, Any]) -> dict[str, Any]:
    """One manifest row from a device's onboarding record (the passcode comes from its QR)."""
    part = device["objects"]["partition"]
    return {
        "index": f"{device['index']:07d}",
        "device_id": device["device_id"],
        "serial_num": device["serial_num"],
        "vendor_id": device["vendor_id"],
        "product_id": device["product_id"],
        "discriminator": device["discriminator"],
        "passcode": f"{payload.decode_qr(device['qr_payload']).passcode:08d}",
        "qr_payload": device["qr_payload"],
        "manual_code": device["manual_code"],
        "rd_id_uid": device.get("rd_id_uid") or "",
        "dac_serial": device["dac_serial"],
        "partition_key": part["key"],
        "partition_sha256": part["sha256"],
    }


def manifest_csv(devices: Iterable[Mapping[str, Any]]) -> bytes:
    """`manifest.csv`: the header of DESIGN §5, one row per device, by index."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for d in sorted(devices, key=lambda d: d["index"]):
        writer.writerow(manifest_row(d))
    return out.getvalue().encode()


def qrcodes_zip(pngs: Iterable[tuple[str, bytes]]) -> bytes:
    """`qrcodes.zip`: `<serial_num>.png` per device (stored, PNGs are compressed already)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for serial, png in sorted(pngs):
            info = zipfile.ZipInfo(f"{serial}.png", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, png)
    return buf.getvalue()


def manifest_json(
    order: Mapping[str, Any],
    devices: Iterable[Mapping[str, Any]],
    objects: Mapping[str, Mapping[str, Any]],
) -> bytes:
    """`manifest.json`: the rows plus the order summary and the digest of every object."""
    rows = []
    for d in sorted(devices, key=lambda d: d["index"]):
        row = manifest_row(d)
        row["objects"] = {name: dict(ref) for name, ref in sorted(d["objects"].items())}
        row["objects"]["onboarding"] = dict(d["onboarding"])
        rows.append(row)
    doc = {
        "order_id": order["order_id"],
        "quantity": order["quantity"],
        "product": order["product"],
        "mfg_date": order["mfg_date"],
        "attestation_profile": order["attestation_profile"],
        "objects": {name: dict(ref) for name, ref in sorted(objects.items())},
        "devices": rows,
    }
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()
