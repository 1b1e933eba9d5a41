"""Scrap a device: a write-once record, and its DAC revoked (cessationOfOperation).

Its identities stay taken: the allocator's registry never gives a serial, discriminator run or
unique ID back, and the index keeps leading to the scrapped device. Scrapping again is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from matterfab.errors import invalid
from matterfab.fleet import keys
from matterfab.fleet.index import device_view, split_device_id
from matterfab.fleet.records import Scrap
from matterfab.fleet.revocations import Outcome, Target, revoke
from matterfab.objectstore import Store

SCRAP_REASON = "cessationOfOperation"
MAX_REASON = 256


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
    return Scrapped(record, created, outcome)
