"""`mfg.devices.allocated`, `mfg.devices.attested`: one message per lot (and see ledger.py).

A lot (matterfab/lots.py) is a run of consecutive devices of one order. What every device of
the order shares (product, profile, commissioning settings; after the signer, the PAI and CD)
travels once per lot; each device adds only its own values. Keyed by `lot_id`, which is the
device_id of the lot's first device, so a lot keeps its partition on redelivery.

Handlers work per device on the views `LotAllocated.identities()` and
`LotAttested.attested()` (DeviceAllocated / DeviceAttested in messages/devices.py): the per-device
code (issue a DAC, build an image) does not know it came in a lot.

Nothing here repeats a field of those views: the order's constants, a device's own values, its
DAC and the lot's attestation are each declared once (messages/devices.py), and a lot and a
view are composed of them, so a renamed field is renamed in both at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from matterfab.lots import MAX_DEVICES
from matterfab.messages.base import ObjectRef
from matterfab.messages.devices import (
    AllocatedDevice,
    Attestation,
    AttestedDevice,
    DeviceAllocated,
    DeviceAttested,
    OrderConstants,
    OrderKey,
)


class LotKey(OrderKey):
    """Which lot of the order: its message key."""

    lot_id: str = Field(description="device_id of the lot's first device: the message key")


# Bases in this order keep the wire's key order (order_id, lot_id, the constants, type, the
# attestation, devices): pydantic places an inherited field where its first declaring base is.
class LotOrder(OrderConstants, LotKey):
    """What every device of a lot shares: its order's constants (sent once per lot)."""

    type: str  # each lot message's own Literal

    def shared(self) -> dict[str, Any]:
        """The fields every message of this lot carries: its order's constants and its key."""
        return {**OrderConstants.fields_in(self), **LotKey.fields_in(self)}


class LotAllocated(LotOrder):
    """A lot of devices with their identities, ready to be attested (`lot-allocated/v1`)."""

    type: Literal["lot-allocated/v1"] = "lot-allocated/v1"
    devices: list[AllocatedDevice] = Field(min_length=1, max_length=MAX_DEVICES)

    def identities(self) -> Iterator[DeviceAllocated]:
        """Each device of the lot as a DeviceAllocated (in index order)."""
        for d in self.devices:
            yield DeviceAllocated.of(self, d)


class LotAttested(Attestation, LotOrder):
    """A lot with its DACs issued by the profile's PAI (`lot-attested/v1`)."""

    type: Literal["lot-attested/v1"] = "lot-attested/v1"
    devices: list[AttestedDevice] = Field(min_length=1, max_length=MAX_DEVICES)

    def attested(self) -> Iterator[tuple[DeviceAttested, ObjectRef | None]]:
        """Each device of the lot as a DeviceAttested, with the ref of its DAC piece."""
        for d in self.devices:
            yield DeviceAttested.of(self, self, d), d.dac

    @classmethod
    def of(
        cls, lot: LotOrder, attestation: Attestation, devices: list[AttestedDevice]
    ) -> LotAttested:
        """The lot `lot` attested by `attestation`, with its `devices`."""
        return cls(**lot.shared(), **Attestation.fields_in(attestation), devices=devices)


__all__ = [
    "AllocatedDevice",
    "AttestedDevice",
    "LotAllocated",
    "LotAttested",
    "LotKey",
    "LotOrder",
]
