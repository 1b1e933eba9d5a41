"""Pure allocation: from a work order and its claimed counter ranges to device identities.

Random values (passcodes, salts, unique IDs, XTS keys) are drawn here from the CSPRNG, once:
the caller stores each chunk write-once and re-reads it on redelivery, so a device's identity
never changes after it was first allocated.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from matterfab.matter import identity
from matterfab.messages import DeviceAllocated, device_id
from matterfab.messages.devices import ResolvedExtra
from matterfab.messages.work_order import WorkOrder

CHUNK = 1000  # devices per allocation chunk object: bounds memory for a million-device order
SALT_LEN = 32


@dataclass(frozen=True)
class Claim:
    """Counter ranges reserved for one order: serial numbers and discriminators."""

    order_id: str
    serial_start: int  # first per-product serial counter value (used by devices without a serial)
    serial_count: int
    discriminator_start: int

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in the bucket."""
        return {
            "order_id": self.order_id,
            "serial_start": self.serial_start,
            "serial_count": self.serial_count,
            "discriminator_start": self.discriminator_start,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Claim:
        """Inverse of to_json."""
        return cls(d["order_id"], d["serial_start"], d["serial_count"], d["discriminator_start"])


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
    start = chunk * CHUNK
    stop = min(order.quantity, start + CHUNK)
    # Devices before this chunk that used the counter: the next counter value to take.
    counter = claim.serial_start + _counter_users_before(order, start)
    out = []
    for i in range(start, stop):
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
        dev: dict[str, Any] = {
            "index": i,
            "serial_num": serial,
            "discriminator": disc,
            "passcode": passcode,
            "salt_b64": base64.b64encode(identity.generate_salt(SALT_LEN)).decode(),
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


def device_message(order: WorkOrder, dev: dict[str, Any]) -> DeviceAllocated:
    """The `mfg.devices.allocated` message for one allocated device."""
    i = dev["index"]
    extras = []
    for e in order.extra_entries:
        value = e.value
        if value is None and order.devices is not None:
            value = order.devices[i].extra[e.key]
        assert value is not None  # guaranteed by WorkOrder.cross_field_errors
        extras.append(ResolvedExtra(namespace=e.namespace, key=e.key, type=e.type, value=value))
    c = order.commissioning
    return DeviceAllocated(
        order_id=order.order_id,
        device_id=device_id(order.order_id, i),
        index=i,
        quantity=order.quantity,
        product=order.product,
        mfg_date=order.mfg_date,
        attestation_profile=order.attestation_profile,
        serial_num=dev["serial_num"],
        discriminator=dev["discriminator"],
        passcode=dev["passcode"],
        salt_b64=dev["salt_b64"],
        iteration_count=c.iteration_count,
        flow=c.flow,
        discovery=list(c.discovery),
        rd_id_uid=dev.get("rd_id_uid"),
        extra=extras,
        partition_size=order.partition.size,
        encryption=order.partition.encryption,
        nvs_keys_wrapped=dev.get("nvs_keys_wrapped"),
        dac_storage=order.dac_storage,
    )
