"""Pure allocation: from a work order and its claimed counter ranges to device identities.

Random values (passcodes, salts, unique IDs, XTS keys) are drawn here from the CSPRNG, once:
the caller stores each chunk write-once and re-reads it on redelivery, so a device's identity
never changes after it was first allocated.

Devices travel in lots (matterfab/lots.py): each chunk is cut into runs of the order's lot
size, kept in its claim (`Claim.lot_size`), so a lot is always the same devices however often
the order is driven: the signer's `dacs.lot` and the builder's objects for it match on every
redelivery. A lot never straddles two chunks.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from matterfab import lots
from matterfab.bucket.models import OrderClaim as Claim  # the stored claim.json (re-exported)
from matterfab.matter import identity
from matterfab.messages import device_id
from matterfab.messages.devices import ResolvedExtra
from matterfab.messages.lots import AllocatedDevice, LotAllocated
from matterfab.messages.work_order import WorkOrder

CHUNK = 1000  # devices per allocation chunk object: bounds memory for a million-device order
SALT_LEN = 32


def counter_serial(vendor_id: int, product_id: int, n: int) -> str:
    """The serial number for value `n` of a product's counter: VVVVPPPP + 8+ digits."""
    return f"{vendor_id:04X}{product_id:04X}{n:08d}"


def counter_serials_needed(order: WorkOrder) -> int:
    """How many devices of the order take their serial from the per-product counter."""
    if order.serial is not None:
        return 0
    if order.devices is None:
        return order.quantity
    return sum(1 for d in order.devices if d.serial_num is None)


def allocate_chunk(
    order: WorkOrder, claim: Claim, chunk: int, wrap_nvs_keys: Any = None
) -> list[dict[str, Any]]:
    """Identities of the devices in chunk `chunk` (CHUNK devices each) as JSON-able dicts.

    `wrap_nvs_keys(device_id) -> str` makes a wrapped XTS key set when the order is encrypted.
    """
    indices = chunk_range(order, chunk)
    # Devices before this chunk that used the counter: the next counter value to take.
    counter = claim.serial_start + _counter_users_before(order, indices.start)
    out = []
    for i in indices:
        override = order.devices[i] if order.devices is not None else None
        serial = order.serial_for(i)
        if serial is None:
            serial = counter_serial(order.product.vendor_id, order.product.product_id, counter)
            counter += 1
        disc = override.discriminator if override and override.discriminator is not None else None
        if disc is None:
            disc = identity.discriminator_at(claim.discriminator_start, i)
        passcode = override.passcode if override and override.passcode is not None else None
        if passcode is None:
            passcode = identity.generate_passcode()
        uid = override.rd_id_uid if override and override.rd_id_uid else None
        if uid is None and order.commissioning.rotating_device_id:
            uid = identity.generate_rd_id_uid().hex()
        salt = override.salt if override and override.salt is not None else None
        if salt is None:
            salt = base64.b64encode(identity.generate_salt(SALT_LEN)).decode()
        dev: dict[str, Any] = {
            "index": i,
            "serial_num": serial,
            "discriminator": disc,
            "passcode": passcode,
            "salt_b64": salt,
            "rd_id_uid": uid,
        }
        if order.partition.encryption == "xts" and wrap_nvs_keys is not None:
            dev["nvs_keys_wrapped"] = wrap_nvs_keys(device_id(order.order_id, i))
        out.append(dev)
    return out


def _counter_users_before(order: WorkOrder, index: int) -> int:
    if order.serial is not None:
        return 0
    if order.devices is None:
        return index
    return sum(1 for d in order.devices[:index] if d.serial_num is None)


def chunk_range(order: WorkOrder, chunk: int) -> range:
    """The device indices of allocation chunk `chunk`."""
    start = chunk * CHUNK
    return range(start, min(order.quantity, start + CHUNK))


def chunk_lots(order: WorkOrder, chunk: int, lot_size: int) -> list[range]:
    """The lots of chunk `chunk`: runs of `lot_size` devices from its start, the last shorter."""
    r = chunk_range(order, chunk)
    return list(lots.lot_ranges(r.start, r.stop, lot_size))


def lot_messages(
    order: WorkOrder,
    chunk: int,
    devices: list[dict[str, Any]],
    lot_size: int,
    only: Iterable[int] | None = None,
    line_key: str | None = None,
) -> list[LotAllocated]:
    """The `mfg.devices.allocated` messages of one stored allocation chunk, a lot each.

    `only`: just the lots holding any of these device indices (the stall watch re-sends a
    missing device with the rest of its lot, so the lot is the same devices as before).
    """
    by_index = {d["index"]: d for d in devices}
    wanted = None if only is None else set(only)
    out = []
    for lot in chunk_lots(order, chunk, lot_size):
        if wanted is not None and wanted.isdisjoint(lot):
            continue
        out.append(lot_message(order, [by_index[i] for i in lot], line_key))
    return out


def lot_message(
    order: WorkOrder, devices: list[dict[str, Any]], line_key: str | None = None
) -> LotAllocated:
    """The `mfg.devices.allocated` message of one lot of allocated devices (in index order)."""
    c = order.commissioning
    first = devices[0]["index"]
    return LotAllocated(
        order_id=order.order_id,
        lot_id=device_id(order.order_id, first),
        quantity=order.quantity,
        product=order.product,
        mfg_date=order.mfg_date,
        attestation_profile=order.attestation_profile,
        iteration_count=c.iteration_count,
        flow=c.flow,
        discovery=list(c.discovery),
        partition_size=order.partition.size,
        encryption=order.partition.encryption,
        dac_storage=order.dac_storage,
        dynamic_passcode=c.dynamic_passcode,
        dac_source=order.dac_source,
        secure_cert=order.secure_cert,
        line=order.line,
        line_key=line_key,
        devices=[allocated_device(order, d) for d in devices],
    )


def allocated_device(order: WorkOrder, dev: dict[str, Any]) -> AllocatedDevice:
    """One allocated device's own values in a lot message (its extras resolved)."""
    i = dev["index"]
    extras = []
    for e in order.extra_entries:
        value = e.value
        if value is None and order.devices is not None:
            value = order.devices[i].extra[e.key]
        assert value is not None  # guaranteed by WorkOrder.cross_field_errors
        extras.append(ResolvedExtra(namespace=e.namespace, key=e.key, type=e.type, value=value))
    return AllocatedDevice(
        index=i,
        serial_num=dev["serial_num"],
        discriminator=dev["discriminator"],
        passcode=dev["passcode"],
        salt_b64=dev["salt_b64"],
        rd_id_uid=dev.get("rd_id_uid"),
        extra=extras,
        nvs_keys_wrapped=dev.get("nvs_keys_wrapped"),
    )
