"""`mfg.devices.allocated`, `mfg.devices.attested`: one message per lot (and see ledger.py).

A lot (matterfab/lots.py) is a run of consecutive devices of one order. What every device of
the order shares (product, profile, commissioning settings; after the signer, the PAI and CD)
travels once per lot; each device adds only its own values. Keyed by `lot_id`, which is the
device_id of the lot's first device, so a lot keeps its partition on redelivery.

Handlers work per device on the views `LotAllocated.identities()` and
`LotAttested.attested()` (DeviceAllocated / DeviceAttested in messages/devices.py): the per-device
code (issue a DAC, build an image) does not know it came in a lot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from matterfab.lots import MAX_DEVICES
from matterfab.messages.base import (
    DEFAULT_LINE,
    DeviceIndex,
    Message,
    ObjectRef,
    OrderId,
    device_id,
)
from matterfab.messages.devices import DeviceAllocated, DeviceAttested, ResolvedExtra
from matterfab.messages.work_order import (
    DAC_STORAGE_DEFAULT,
    DacSource,
    DacStorage,
    Product,
    SecureCertOptions,
)


class LotOrder(Message):
    """What every device of a lot shares: its order's constants (sent once per lot)."""

    order_id: OrderId
    lot_id: str = Field(description="device_id of the lot's first device: the message key")
    quantity: int = Field(ge=1, description="Devices in the whole order")
    product: Product
    mfg_date: str = Field(description="YYYY-MM-DD")
    attestation_profile: str
    iteration_count: int = Field(ge=1000, le=100_000)
    flow: Literal["standard", "user-intent", "custom"]
    discovery: list[str]
    partition_size: int
    encryption: Literal["none", "xts"] = "none"
    dac_storage: DacStorage = DAC_STORAGE_DEFAULT
    dynamic_passcode: bool = Field(False, description="No verifier, no QR or manual code")
    dac_source: DacSource = Field("issued", description="issued or imported (dac import)")
    secure_cert: SecureCertOptions | None = Field(
        None, description="esp_secure_cert options (dac_storage secure-cert)"
    )
    line: str = Field(DEFAULT_LINE, description="The production line the order is sealed to")
    line_key: str | None = Field(
        None,
        description="Fingerprint of the line key fixed when the order was accepted (claim.json); "
        "absent: orders accepted before lines, sealed to the line's current key",
    )


class AllocatedDevice(Message):
    """One device's own identity within a lot."""

    index: DeviceIndex
    serial_num: str = Field(description="Unique per product, never reused")
    discriminator: int = Field(ge=0, le=4095)
    passcode: int = Field(ge=1, le=99999998, description="Setup passcode (a secret: never logged)")
    salt_b64: str = Field(description="SPAKE2+ salt, base64 of 16..32 bytes")
    rd_id_uid: str | None = Field(None, description="Rotating device ID unique ID, hex")
    extra: list[ResolvedExtra] = Field(
        default_factory=list, description="Extra NVS entries with this device's values"
    )
    nvs_keys_wrapped: str | None = Field(
        None, description="XTS keys partition, AES-256-GCM wrapped, base64 (encryption=xts)"
    )


class AttestedDevice(AllocatedDevice):
    """One device of a lot with its DAC (the DAC fields empty: on-module, none issued)."""

    dac_serial: str = Field("", description="DAC serial number, hex (empty: on-module)")
    dac_cert_b64: str = Field("", description="DAC certificate, DER, base64 (empty: on-module)")
    dac_key_wrapped: str = Field(
        "",
        description="DAC private key (32-byte scalar), AES-256-GCM wrapped with the KEK and "
        "bound to the device_id, base64 (empty: on-module)",
    )
    dac: ObjectRef | None = Field(
        None, description="The DAC's piece of the lot's dacs.lot (dac.der; absent: on-module)"
    )


class LotAllocated(LotOrder):
    """A lot of devices with their identities, ready to be attested (`lot-allocated/v1`)."""

    type: Literal["lot-allocated/v1"] = "lot-allocated/v1"
    devices: list[AllocatedDevice] = Field(min_length=1, max_length=MAX_DEVICES)

    def identities(self) -> Iterator[DeviceAllocated]:
        """Each device of the lot as a DeviceAllocated (in index order)."""
        common = self.model_dump(exclude={"type", "lot_id", "devices"})
        for d in self.devices:
            yield DeviceAllocated(
                **common,
                **d.model_dump(),
                device_id=device_id(self.order_id, d.index),
            )


class LotAttested(LotOrder):
    """A lot with its DACs issued by the profile's PAI (`lot-attested/v1`)."""

    type: Literal["lot-attested/v1"] = "lot-attested/v1"
    pai_cert_b64: str = Field("", description="PAI certificate, DER, base64 (empty: on-module)")
    cd_b64: str = Field(description="Certification Declaration, DER, base64")
    devices: list[AttestedDevice] = Field(min_length=1, max_length=MAX_DEVICES)

    def attested(self) -> Iterator[tuple[DeviceAttested, ObjectRef | None]]:
        """Each device of the lot as a DeviceAttested, with the ref of its DAC piece."""
        common = self.model_dump(exclude={"type", "lot_id", "devices"})
        for d in self.devices:
            own = d.model_dump(exclude={"dac"})
            yield (
                DeviceAttested(**common, **own, device_id=device_id(self.order_id, d.index)),
                d.dac,
            )


__all__ = [
    "AllocatedDevice",
    "AttestedDevice",
    "LotAllocated",
    "LotAttested",
    "LotOrder",
]
