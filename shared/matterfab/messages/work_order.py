"""`mfg.work-orders`: the work order an ERP publishes (DESIGN §4), and its validation."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from matterfab.errors import FieldError
from matterfab.matter import identity, nvs, product
from matterfab.messages.base import DEFAULT_LINE, LINE_PATTERN, Message, OrderId

MAX_QUANTITY = 1_000_000
# Limits of what reaches the NVS partition are the partition's own (matter/nvs.py FIELDS).
LIMITS = nvs.STRING_LIMITS
SERIAL_MAX_LEN = LIMITS["serial_num"]  # Basic Information: SerialNumber, at most 32
NVS_KEY_MAX_LEN = nvs.MAX_NAME  # ESP-IDF NVS: keys and namespaces are at most 15 characters
PARTITION_MIN_SIZE = nvs.MIN_SIZE  # NVS needs at least three 4 KiB pages (two data + one spare)
PARTITION_MAX_SIZE = nvs.MAX_SIZE
MAX_REPORTED_ERRORS = 50  # an order with a million bad rows must still give a readable event

ExtraType = nvs.EntryType
DiscoveryName = Literal["ble", "soft-ap", "on-network", "wifi-paf"]
# Where each device's DAC, DAC key and PAI certificate live (DESIGN §4): in the NVS factory
# partition (mfg_tool's default), in a per-device esp_secure_cert partition (Espressif's
# pre-provisioning layout), or already on the module (no DAC issued by this order).
DacStorage = nvs.DacStorage
DAC_STORAGE_DEFAULT: DacStorage = "factory-nvs"
FIRMWARE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # same alphabet as order IDs: safe in a key


class _Strict(BaseModel):
    # strict: an ERP that sends "300" or true where an integer belongs has a bug worth
    # reporting, not guessing at (lax mode would read true as quantity 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Product(_Strict):
    """What is being made: the identity written into every device's Basic Information."""

    vendor_id: int = Field(ge=1, le=0xFFF4, description="Matter Vendor ID, 1..0xFFF4")
    product_id: int = Field(ge=1, le=0xFFFF, description="Matter Product ID, 1..0xFFFF")
    vendor_name: str | None = Field(
        None,
        max_length=LIMITS["vendor_name"],
        description=f"VendorName, ≤ {LIMITS['vendor_name']} chars",
    )
    product_name: str | None = Field(
        None,
        max_length=LIMITS["product_name"],
        description=f"ProductName, ≤ {LIMITS['product_name']} chars",
    )
    hardware_version: int | None = Field(None, ge=0, le=0xFFFF, description="HardwareVersion u16")
    hardware_version_string: str | None = Field(
        None,
        min_length=1,
        max_length=LIMITS["hardware_version_string"],
        description=f"HardwareVersionString, ≤ {LIMITS['hardware_version_string']} chars",
    )
    part_number: str | None = Field(
        None,
        max_length=LIMITS["part_number"],
        description=f"PartNumber, ≤ {LIMITS['part_number']} chars",
    )
    product_label: str | None = Field(
        None,
        max_length=LIMITS["product_label"],
        description=f"ProductLabel, ≤ {LIMITS['product_label']}",
    )
    product_url: str | None = Field(
        None,
        max_length=LIMITS["product_url"],
        description=f"ProductURL, ≤ {LIMITS['product_url']} chars",
    )
    product_finish: str | None = Field(
        None, description="ProductAppearance finish, by its spec name (e.g. matte)"
    )
    product_color: str | None = Field(
        None, description="ProductAppearance primary color, by its spec name (e.g. white)"
    )

    def factory_fields(self) -> dict[str, Any]:
        """These fields as `nvs.FactoryData` keyword arguments (they share their names)."""
        return self.model_dump()

    @field_validator("product_finish")
    @classmethod
    def _finish(cls, v: str | None) -> str | None:
        if v is not None and v not in product.FINISH_NAMES:
            raise ValueError(f"must be one of {', '.join(product.FINISH_NAMES)}")
        return v

    @field_validator("product_color")
    @classmethod
    def _color(cls, v: str | None) -> str | None:
        if v is not None and v not in product.COLOR_NAMES:
            raise ValueError(f"must be one of {', '.join(product.COLOR_NAMES)}")
        return v


class Commissioning(_Strict):
    """How the device is commissioned: SPAKE2+ cost, discovery transports and flow."""

    iteration_count: int = Field(
        10_000, ge=1000, le=100_000, description="SPAKE2+ PBKDF2 iterations, 1000..100000"
    )
    discovery: list[DiscoveryName] = Field(
        default_factory=lambda: list[DiscoveryName](["ble"]),
        min_length=1,
        description="Discovery capabilities",
    )
    flow: Literal["standard", "user-intent", "custom"] = Field(
        "standard", description="Commissioning flow"
    )
    rotating_device_id: bool = Field(False, description="Write a rotating device ID unique ID")

    @field_validator("discovery")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a discovery capability")
        return v


class SerialPattern(_Strict):
    """Serial numbers `<prefix><start + index, zero-padded to digits>`."""

    prefix: str = Field("", max_length=SERIAL_MAX_LEN, description="Text before the number")
    start: int = Field(ge=0, description="Number of the first device")
    digits: int = Field(ge=1, le=20, description="Width of the number, zero-padded")


class DeviceOverride(_Strict):
    """Per-device values that replace the generated ones (like mfg_tool's --mcsv)."""

    serial_num: str | None = Field(None, min_length=1, max_length=SERIAL_MAX_LEN)
    discriminator: int | None = Field(None, description="0..4095")
    passcode: int | None = Field(None, description="A valid setup passcode")
    rd_id_uid: str | None = Field(
        None, description="Rotating device ID unique ID, hex, 16..32 bytes"
    )
    extra: dict[str, int | str] = Field(
        default_factory=dict, description="Values for extra_entries that have no common value"
    )

    @field_validator("discriminator")
    @classmethod
    def _disc(cls, v: int | None) -> int | None:
        if v is not None:
            identity.validate_discriminator(v)
        return v

    @field_validator("passcode")
    @classmethod
    def _passcode(cls, v: int | None) -> int | None:
        if v is not None:
            identity.validate_passcode(v)
        return v

    @field_validator("rd_id_uid")
    @classmethod
    def _uid(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError("must be hexadecimal") from None
        if not 16 <= len(raw) <= 32:
            raise ValueError("must be 16..32 bytes (32..64 hex digits)")
        return v.lower()


class ExtraEntry(_Strict):
    """A custom NVS entry; without `value` each device supplies it in `devices[i].extra`."""

    namespace: str = Field(min_length=1, max_length=NVS_KEY_MAX_LEN)
    key: str = Field(min_length=1, max_length=NVS_KEY_MAX_LEN)
    type: ExtraType
    value: int | str | None = None


class Partition(_Strict):
    """The NVS factory partition: its size and whether it is XTS-encrypted."""

    size: int = Field(
        0x6000,
        ge=PARTITION_MIN_SIZE,
        le=PARTITION_MAX_SIZE,
        description="Bytes, multiple of 0x1000",
    )
    encryption: Literal["none", "xts"] = "none"

    @field_validator("size")
    @classmethod
    def _pages(cls, v: int) -> int:
        if v % nvs.PAGE_SIZE:
            raise ValueError("must be a multiple of 0x1000 (4096)")
        return v


class WorkOrder(Message):
    """A manufacturing work order: make `quantity` devices of `product` (`work-order/v1`)."""

    model_config = ConfigDict(strict=True)  # as _Strict: no "300" for 300, no true for 1
    type: Literal["work-order/v1"] = "work-order/v1"
    order_id: OrderId
    product: Product
    quantity: int = Field(ge=1, le=MAX_QUANTITY, description="Devices to make, 1..1000000")
    mfg_date: Annotated[str, Field(description="Manufacturing date, YYYY-MM-DD")]
    attestation_profile: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="An attestation profile configured on the signer",
    )
    commissioning: Commissioning = Field(default_factory=Commissioning)
    serial: SerialPattern | None = None
    devices: list[DeviceOverride] | None = None
    extra_entries: list[ExtraEntry] = Field(default_factory=list)
    partition: Partition = Field(default_factory=Partition)
    dac_storage: DacStorage = Field(
        DAC_STORAGE_DEFAULT,
        description=(
            "Where the DAC goes: factory-nvs (NVS factory partition), secure-cert "
            "(per-device esp_secure_cert partition), on-module (already on the module)"
        ),
    )
    firmware: str | None = Field(
        None,
        pattern=FIRMWARE_NAME_PATTERN,
        description="A firmware bundle registered with `matterfab firmware add`",
    )
    line: str = Field(
        DEFAULT_LINE,
        pattern=LINE_PATTERN,
        description="The production line whose key seals the order's per-device secrets "
        "(`matterfab line list`); default `local`",
    )

    @field_validator("mfg_date")
    @classmethod
    def _date(cls, v: str) -> str:
        if len(v) != 10 or v[4] != "-" or v[7] != "-":
            raise ValueError("must be a date written YYYY-MM-DD")
        try:
            date.fromisoformat(v)
        except ValueError:
            raise ValueError("must be a real calendar date (YYYY-MM-DD)") from None
        return v

    def cross_field_errors(self) -> list[FieldError]:
        """Rules that span fields, which a per-field schema cannot express (DESIGN §4)."""
        errors: list[FieldError] = []
        if self.devices is not None and len(self.devices) != self.quantity:
            errors.append(
                FieldError("devices", f"must have exactly quantity ({self.quantity}) items")
            )
        if self.serial is not None:
            last = self.serial.start + self.quantity - 1
            if len(str(last)) > self.serial.digits:
                errors.append(
                    FieldError("serial.digits", f"is too small for the last serial number {last}")
                )
            if len(self.serial.prefix) + self.serial.digits > SERIAL_MAX_LEN:
                errors.append(
                    FieldError("serial.prefix", "with the digits must be at most 32 characters")
                )
        seen: set[tuple[str, str]] = set()
        for i, e in enumerate(self.extra_entries):
            if (e.namespace, e.key) in seen:
                errors.append(FieldError(f"extra_entries[{i}].key", "must be unique per namespace"))
            seen.add((e.namespace, e.key))
            if e.value is None and self.devices is None:
                errors.append(
                    FieldError(f"extra_entries[{i}].value", "is required when devices is absent")
                )
        if self.devices is not None and len(self.devices) == self.quantity:
            errors.extend(self._device_errors(self.devices))
        return errors[:MAX_REPORTED_ERRORS]

    def _device_errors(self, devices: list[DeviceOverride]) -> list[FieldError]:
        errors: list[FieldError] = []
        per_device = {e.key for e in self.extra_entries if e.value is None}
        known = {e.key for e in self.extra_entries}
        serials: dict[str, int] = {}
        uids: dict[str, int] = {}
        for i, d in enumerate(devices):
            for key in sorted(per_device - d.extra.keys()):
                errors.append(
                    FieldError(f"devices[{i}].extra.{key}", "is required by extra_entries")
                )
            for key in sorted(d.extra.keys() - known):
                errors.append(FieldError(f"devices[{i}].extra.{key}", "is not in extra_entries"))
            serial = self.serial_for(i)
            if serial is not None:
                if serial in serials:
                    errors.append(
                        FieldError(
                            f"devices[{i}].serial_num",
                            f"duplicates the serial number of device {serials[serial]}",
                        )
                    )
                serials.setdefault(serial, i)
            if d.rd_id_uid is not None:
                if d.rd_id_uid in uids:
                    errors.append(
                        FieldError(
                            f"devices[{i}].rd_id_uid",
                            f"duplicates the rd_id_uid of device {uids[d.rd_id_uid]}",
                        )
                    )
                uids.setdefault(d.rd_id_uid, i)
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
        return errors

    def serial_for(self, index: int) -> str | None:
        """The serial number the order's pattern or overrides give device `index`, if any."""
        if self.devices is not None and self.devices[index].serial_num is not None:
            return self.devices[index].serial_num
        if self.serial is not None:
            return f"{self.serial.prefix}{self.serial.start + index:0{self.serial.digits}d}"
        return None
