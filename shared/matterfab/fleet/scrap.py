"""Scrap a device: a write-once record, and its DAC revoked (cessationOfOperation).

Its identities stay taken: the allocator's registry never gives a serial, discriminator run or
unique ID back, and the index keeps leading to the scrapped device. Scrapping again is a no-op.

The order's `bindings-scrapped.csv` (beside `bindings.csv` and `bindings-failed.csv`) lists
every scrapped device; it is rebuilt from the scrap records after each scrap, so it is a view
of the records, which stay the truth. The manifest is write-once (the `completed` event
carries its sha256) and does not change after the order completed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from matterfab.bucket import keys as bucket_keys
from matterfab.errors import invalid
from matterfab.fleet import keys
from matterfab.fleet.index import LotImages, current_images, device_view, split_device_id
from matterfab.fleet.records import DeviceImage, Scrap
from matterfab.fleet.revocations import Outcome, Target, revoke
from matterfab.objectstore import Store

SCRAP_REASON = "cessationOfOperation"
MAX_REASON = 256
SCRAPPED_CSV = bucket_keys.BINDINGS_SCRAPPED_CSV
SCRAPPED_COLUMNS = ("device_id", "serial_num", "station_id", "reason", "by", "at")


@dataclass(frozen=True)
class Scrapped:
    """What `scrap` did: the record that stands, whether it is new, and the DAC revocation."""

    record: Scrap
    created: bool
    revocation: Outcome | None


async def scrap(
    store: Store, device_id: str, reason: str, by: str, station_id: str | None = None
) -> Scrapped:
    """Scrap one device (NotFound if it is no device; idempotent)."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON or "\n" in reason:
        raise invalid("reason", f"must be one line of 1..{MAX_REASON} characters")
    view = await device_view(store, device_id)
    order_id, index = split_device_id(device_id)
    record = Scrap(device_id=device_id, reason=reason, by=by, station_id=station_id)
    key = keys.scrap_key(order_id, index)
    created = await store.put_if_absent(key, record.to_bytes(), "application/json")
    if not created:
        record = Scrap.model_validate_json(await store.get(key))
    outcome = None
    if view.image is not None and view.image.dac_serial:
        # Also on a repeat: a crash between the record and the revocation must not leave the
        # DAC of a scrapped device valid.
        target = Target(
            str(view.attestation_profile), device_id, view.image.generation, view.image.dac_serial
        )
        outcome = await revoke(store, target, SCRAP_REASON, by)
    await store.put(
        bucket_keys.bindings_scrapped_csv(order_id), await scrapped_csv(store, order_id), "text/csv"
    )
    return Scrapped(record, created, outcome)


async def scrapped_csv(store: Store, order_id: str) -> bytes:
    """`bindings-scrapped.csv` of an order, from its scrap records (by index)."""
    listed = await store.list_keys(keys.order_prefix(order_id))
    wanted = [k for k in listed if k.endswith("/" + keys.SCRAPPED)]
    built = LotImages(store, order_id)
    images = await current_images(store, order_id, built) if wanted else {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SCRAPPED_COLUMNS)
    for key in sorted(wanted):
        rec = Scrap.model_validate_json(await store.get(key))
        _, index = split_device_id(rec.device_id)
        serial_num = ""
        if index in images:
            gen, dac = images[index]
            lot_image = await built.get(index) if gen == 0 else None
            if lot_image is not None and lot_image.dac_serial == dac:
                serial_num = lot_image.serial_num
            else:
                raw = await store.get(keys.image_key(order_id, index, gen, dac))
                serial_num = DeviceImage.model_validate_json(raw).serial_num
        at = rec.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        writer.writerow((rec.device_id, serial_num, rec.station_id or "", rec.reason, rec.by, at))
    return out.getvalue().encode()
