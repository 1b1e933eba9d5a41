"""Per-device messages: `mfg.images.ready` (one record per device, keyed by `device_id`), and
the per-device views of a lot (DeviceAllocated, DeviceAttested) that handlers work on.

`mfg.devices.allocated` and `mfg.devices.attested` carry lots (messages/lots.py); a lot expands
into these views, so each stage still has everything it needs about one device in one object:
the builder builds an image from a DeviceAttested alone.

Each field is declared once, in one part: `OrderConstants` (what every device of an order
shares), `AllocatedDevice` (one device's own values), `IssuedDac` (its DAC), `Attestation` (the
lot's PAI and CD). A lot is composed of them (messages/lots.py), and so is a view
(`DeviceAllocated.of`, `DeviceAttested.of`), by `Part.fields_in`: no field is copied by a name typed
twice, so renaming one renames it everywhere (tests/unit/test_message_composition.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import Field

from matterfab.messages.base import (
    DEFAULT_LINE,
    DeviceIndex,
    Message,
    ObjectRef,
    OrderId,
    device_id,
    utcnow,
)
from matterfab.messages.onboarding import OnboardingObjects, OnboardingRecord
from matterfab.messages.work_order import (
    DAC_STORAGE_DEFAULT,
    DacSource,
    DacStorage,
    ExtraType,
    Product,
    SecureCertOptions,
)


class ResolvedExtra(Message):
    """One extra NVS entry with this device's value resolved."""

    namespace: str
    key: str
    type: ExtraType
    value: int | str


P = TypeVar("P", bound="Part")


class Part(Message):
    """A group of fields declared once, that messages are composed of."""

    @classmethod
    def fields_in(cls: type[P], value: P) -> dict[str, Any]:
        """The fields `value` has as a `cls`, by attribute: what a composed message takes of
        it. Typed: mypy refuses a `value` that is not a `cls` (and so does this, at run time)."""
        if not isinstance(value, cls):
            raise TypeError(f"{type(value).__name__} is not a {cls.__name__}")
        return {name: getattr(value, name) for name in cls.model_fields}


class OrderKey(Part):
    """The order a message is about (the first field of every per-order message)."""

    order_id: OrderId


class OrderConstants(OrderKey):
    """What every device of an order shares: its order's constants, declared once here.

    A lot carries them once (messages/lots.py `LotOrder`); a device's view
    (`DeviceIdentity`) is them plus one device's own values (`AllocatedDevice`).
    """

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


class AllocatedDevice(Part):
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


class IssuedDac(Part):
    """One device's DAC as the signer issued it (the fields empty: on-module, none issued).

    In a `LotAttested` the signer sets `dac_serial` only: the certificate and its wrapped key
    are the device's piece of the lot's `dacs.lot` (`AttestedDevice.dac`), which the builder
    reads once a lot. Lots from signers before that carry both inline; the builder takes either.
    """

    dac_serial: str = Field("", description="DAC serial number, hex (empty: on-module)")
    dac_cert_b64: str = Field("", description="DAC certificate, DER, base64 (empty: on-module)")
    dac_key_wrapped: str = Field(
        "",
        description="DAC private key (32-byte scalar), AES-256-GCM wrapped with the KEK and "
        "bound to the device_id, base64 (empty: on-module)",
    )


class Attestation(Part):
    """What the attestation profile adds to every device of a lot: its PAI and CD."""

    pai_cert_b64: str = Field("", description="PAI certificate, DER, base64 (empty: on-module)")
    cd_b64: str = Field(description="Certification Declaration, DER, base64")


class AttestedDevice(IssuedDac, AllocatedDevice):
    """One device of a lot with its DAC (the DAC fields empty: on-module, none issued)."""

    dac: ObjectRef | None = Field(
        None,
        description="The DAC's piece of the lot's dacs.lot (dac.der; its index entry holds the "
        "wrapped key; absent: on-module)",
    )


class DeviceIdentity(OrderConstants, AllocatedDevice):
    """The identity the allocator gave one device: everything but its attestation (its
    order's constants plus its own values, each declared once, above)."""

    device_id: str = Field(description="<order_id>/<index as 7 digits>")

    @staticmethod
    def composed(order: OrderConstants, device: AllocatedDevice) -> dict[str, Any]:
        """The fields of the device `device` of the order `order`."""
        return {
            **OrderConstants.fields_in(order),
            **AllocatedDevice.fields_in(device),
            "device_id": device_id(order.order_id, device.index),
        }


class DeviceAllocated(DeviceIdentity):
    """A device's identity, ready to be attested (one device of a LotAllocated)."""

    type: Literal["device-allocated/v1"] = "device-allocated/v1"

    @classmethod
    def of(cls, order: OrderConstants, device: AllocatedDevice) -> DeviceAllocated:
        """Device `device` of a lot of `order`: a view of values already validated (the lot's),
        so built without validating them again (`model_construct`; tests prove it equal)."""
        return cls.model_construct(**cls.composed(order, device))


class DeviceAttested(DeviceIdentity, IssuedDac, Attestation):
    """A device with its DAC issued by the profile's PAI (one device of a LotAttested).

    For dac_storage on-module no DAC is issued: the DAC fields are empty, only the CD is set.
    """

    type: Literal["device-attested/v1"] = "device-attested/v1"

    @classmethod
    def of(
        cls, order: OrderConstants, attestation: Attestation, device: AttestedDevice
    ) -> DeviceAttested:
        """Device `device` of a lot of `order` attested by `attestation`: a view of values
        already validated, built without validating them again (as `DeviceAllocated.of`)."""
        return cls.model_construct(
            **cls.composed(order, device),
            **IssuedDac.fields_in(device),
            **Attestation.fields_in(attestation),
        )


class DeviceObjects(OnboardingObjects):
    """The per-device objects in the bucket: onboarding.json's refs and its own."""

    onboarding: ObjectRef


class ImageReady(OnboardingRecord):
    """A device's factory image and label are stored and ready to flash (`image-ready/v1`).

    Its onboarding record (the fields of OnboardingRecord) plus where it travels.
    """

    type: Literal["image-ready/v1"] = "image-ready/v1"
    order_id: OrderId
    objects: DeviceObjects  # the record's refs plus onboarding.json's own
    qrcode_png_b64: str | None = Field(
        None,
        description="The QR label PNG (the bytes of objects.qrcode), base64; not sent since "
        "lots: the PNG is a piece of the lot's labels.lot (objects.qrcode), which a label "
        "printer or the assembler reads once per lot",
    )
    partition_offset: str | None = Field(
        None, description="Flash offset of the factory partition, if known (hex)"
    )
    efuse_chip: str | None = Field(
        None, description="Chip whose eFuse block takes objects.efuse_key (ecdsa-peripheral)"
    )
    requeues: int = Field(
        0,
        ge=0,
        description="Times a station put this image back after failing to flash it (0: built)",
    )
    at: datetime = Field(default_factory=utcnow)

    @classmethod
    def of(
        cls, record: OnboardingRecord, order_id: str, onboarding: ObjectRef, **fields: Any
    ) -> ImageReady:
        """The message announcing `record`, stored as onboarding.json at `onboarding`: made of
        validated values (the record's, the ref's), so not validated again (`model_construct`:
        ~15 us a device in the builder; tests prove it equal to validating the same fields)."""
        unknown = set(fields) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"ImageReady has no fields {sorted(unknown)}")
        objects = DeviceObjects.model_construct(onboarding=onboarding, **dict(record.objects))
        return cls.model_construct(
            **{**dict(record), "objects": objects}, order_id=order_id, **fields
        )

    def record(self) -> OnboardingRecord:
        """The onboarding record this message carries (as in its onboarding.json)."""
        fields = {name: getattr(self, name) for name in OnboardingRecord.model_fields}
        fields["objects"] = OnboardingObjects(**self.objects.model_dump(exclude={"onboarding"}))
        return OnboardingRecord(**fields)
