"""`mfg.work-orders`: the work order an ERP publishes (DESIGN §4), and its validation."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from matterfab.errors import FieldError
from matterfab.labels.layout import LabelLayout, fit_errors
from matterfab.matter import device_info, identity, nvs, product, spake2p
from matterfab.messages.base import DEFAULT_LINE, LINE_PATTERN, Message, OrderId

MAX_QUANTITY = 1_000_000
# Limits of what reaches the NVS partition are the partition's own (matter/nvs.py FIELDS).
LIMITS = nvs.STRING_LIMITS
SERIAL_MAX_LEN = LIMITS["serial_num"]  # Basic Information: SerialNumber, at most 32
NVS_KEY_MAX_LEN = nvs.MAX_NAME  # ESP-IDF NVS: keys and namespaces are at most 15 characters
PARTITION_MIN_SIZE = nvs.MIN_SIZE  # NVS needs at least three 4 KiB pages (two data + one spare)
PARTITION_MAX_SIZE = nvs.MAX_SIZE
VERIFIER_LEN = 97  # SPAKE2+ verifier: w0 (32) ‖ L (65, uncompressed point)
MAX_REPORTED_ERRORS = 50  # an order with a million bad rows must still give a readable event

ExtraType = nvs.EntryType
# "soft-ap" stays in the schema so an order using it gets the reason it is refused (below).
DiscoveryName = Literal["ble", "soft-ap", "on-network", "wifi-paf", "nfc", "thread"]
SOFT_AP_REFUSED = (
    "soft-ap is reserved: the Matter specification marks Discovery Capabilities bit 0 reserved "
    "(SHALL be 0) and esp-matter-mfg-tool 1.0.29 refuses it too; use ble, on-network, "
    "wifi-paf, nfc or thread"
)
# Where each device's DAC, DAC key and PAI certificate live (DESIGN §4): in the NVS factory
# partition (mfg_tool's default), in a per-device esp_secure_cert partition (Espressif's
# pre-provisioning layout), or already on the module (no DAC issued by this order).
DacStorage = nvs.DacStorage
DAC_STORAGE_DEFAULT: DacStorage = "factory-nvs"
DacSource = Literal["issued", "imported"]
FIRMWARE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # same alphabet as order IDs: safe in a key


class _Strict(BaseModel):
    # strict: an ERP that sends "300" or true where an integer belongs has a bug worth
    # reporting, not guessing at (lax mode would read true as quantity 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FixedLabel(_Strict):
    """A Fixed Label cluster entry (mfg_tool --fixed-labels `<ep>/<label>/<value>`)."""

    endpoint: int = Field(ge=0, le=device_info.ENDPOINT_MAX, description="Endpoint ID")
    label: str = Field(
        min_length=1, max_length=device_info.FIXED_LABEL_MAX, description="Label, 1..16 chars"
    )
    value: str = Field(
        min_length=1, max_length=device_info.FIXED_LABEL_MAX, description="Value, 1..16 chars"
    )


class SemanticTag(_Strict):
    """A semantic tag of a supported mode."""

    value: int = Field(ge=0, le=0xFFFF, description="Tag value, u16")
    mfg_code: int = Field(ge=0, le=0xFFFF, description="Manufacturer code, u16 (0: standard)")


class SupportedMode(_Strict):
    """A Mode Select option of an endpoint (mfg_tool --supported-modes)."""

    endpoint: int = Field(ge=0, le=device_info.ENDPOINT_MAX, description="Endpoint ID")
    label: str = Field(
        min_length=1, max_length=device_info.MODE_LABEL_MAX, description="Label, 1..64 chars"
    )
    mode: int = Field(ge=0, le=0xFF, description="Mode value, u8")
    tags: list[SemanticTag] = Field(default_factory=list, description="Semantic tags")


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

    calendar_types: list[str] | None = Field(
        None,
        min_length=1,
        description="CalendarTypeEnum names, lower case (e.g. gregorian): `cal-types`",
    )
    locales: list[str] | None = Field(
        None, min_length=1, description="Supported locales, BCP 47 tags (e.g. en-US)"
    )
    fixed_labels: list[FixedLabel] | None = Field(
        None, min_length=1, description="Fixed Label cluster entries per endpoint"
    )
    supported_modes: list[SupportedMode] | None = Field(
        None, min_length=1, description="Mode Select options per endpoint"
    )

    def factory_fields(self) -> dict[str, Any]:
        """These fields as `nvs.FactoryData` keyword arguments (they share their names)."""
        out = self.model_dump(
            exclude={"calendar_types", "locales", "fixed_labels", "supported_modes"}
        )
        out["calendar_types"] = tuple(self.calendar_types) if self.calendar_types else None
        out["locales"] = tuple(self.locales) if self.locales else None
        out["fixed_labels"] = (
            tuple(device_info.FixedLabel(f.endpoint, f.label, f.value) for f in self.fixed_labels)
            if self.fixed_labels
            else None
        )
        out["supported_modes"] = (
            tuple(
                device_info.SupportedMode(
                    m.endpoint,
                    m.label,
                    m.mode,
                    tuple(device_info.SemanticTag(t.value, t.mfg_code) for t in m.tags),
                )
                for m in self.supported_modes
            )
            if self.supported_modes
            else None
        )
        return out

    @field_validator("calendar_types")
    @classmethod
    def _calendars(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            _raise_first(device_info.calendar_errors(tuple(v), "calendar_types"))
        return v

    @field_validator("locales")
    @classmethod
    def _locales(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            _raise_first(device_info.locale_errors(tuple(v), "locales"))
        return v

    @field_validator("fixed_labels")
    @classmethod
    def _labels(cls, v: list[FixedLabel] | None) -> list[FixedLabel] | None:
        if v is not None:
            labels = tuple(device_info.FixedLabel(f.endpoint, f.label, f.value) for f in v)
            _raise_first(device_info.fixed_label_errors(labels, "fixed_labels"))
        return v

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
    dynamic_passcode: bool = Field(
        False,
        description="The firmware makes its passcode: no verifier in the partition and no QR "
        "or manual code (mfg_tool --enable-dynamic-passcode)",
    )

    @field_validator("discovery")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a discovery capability")
        if "soft-ap" in v:
            raise ValueError(SOFT_AP_REFUSED)
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
    salt: str | None = Field(
        None, description="Precomputed SPAKE2+ salt, base64 of 16..32 bytes (with verifier)"
    )
    verifier: str | None = Field(
        None,
        description="Precomputed SPAKE2+ verifier w0 ‖ L, base64 of 97 bytes (with salt); "
        "checked against passcode when one is given",
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

    @field_validator("salt")
    @classmethod
    def _salt(cls, v: str | None) -> str | None:
        if v is not None and not 16 <= len(_b64(v)) <= 32:
            raise ValueError("must be base64 of 16..32 bytes (Matter SPAKE2+ salt length)")
        return v

    @field_validator("verifier")
    @classmethod
    def _verifier(cls, v: str | None) -> str | None:
        if v is not None and len(_b64(v)) != VERIFIER_LEN:
            raise ValueError(f"must be base64 of {VERIFIER_LEN} bytes (w0 32 ‖ L 65)")
        return v


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("must be valid base64") from None


def _raise_first(errors: list[FieldError]) -> None:
    # A field validator raises one ValueError; its location is the field, the rest is the rule
    # (with the list index when the rule names one).
    if errors:
        e = errors[0]
        where = e.field.partition("[")[2]
        raise ValueError(f"[{where} {e.message}" if where else e.message)


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


ECDSA_CHIPS = ("esp32h2", "esp32p4", "esp32c5", "esp32c61", "esp32s31")
"""Chips with an ECDSA peripheral that signs with a P-256 key held in an eFuse block."""


class SecureCertOptions(_Strict):
    """What else the esp_secure_cert partition holds (dac_storage secure-cert only)."""

    commissionable_data: bool = Field(
        False,
        description="Discriminator, verifier, salt and iteration count in TLV 201/0..3 "
        "instead of the NVS partition",
    )
    rd_id_uid: bool = Field(
        False, description="Rotating device ID unique ID in TLV 201/4 instead of the NVS partition"
    )
    key: Literal["plaintext", "ecdsa-peripheral"] = Field(
        "plaintext",
        description="plaintext: the DAC key in the PRIV_KEY entry; ecdsa-peripheral: the key "
        "is burned into eFuse block efuse_key_id + 4 by the station and left out of the image",
    )
    efuse_key_id: int | None = Field(
        None, ge=0, le=5, description="eFuse key block BLOCK_KEY<n>, 0..5 (ecdsa-peripheral)"
    )
    chip: str | None = Field(
        None, description=f"Target chip (ecdsa-peripheral): one of {', '.join(ECDSA_CHIPS)}"
    )


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
            "(per-device esp_secure_cert partition), on-module (already on the module), "
            "device-key (the device makes its key; the station has its CSR signed on the line)"
        ),
    )
    firmware: str | None = Field(
        None,
        pattern=FIRMWARE_NAME_PATTERN,
        description="A firmware bundle registered with `matterfab firmware add`",
    )
    label: LabelLayout | None = Field(
        None, description="The device label's layout (absent: the default 50 x 25 mm, 203 dpi)"
    )
    secure_cert: SecureCertOptions | None = Field(
        None, description="esp_secure_cert options (dac_storage secure-cert only)"
    )
    dac_source: DacSource = Field(
        "issued",
        description="issued: the signer makes each DAC; imported: each device takes one unused "
        "DAC imported with `matterfab dac import` for the attestation profile",
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
        problem = nvs.mfg_date_error(v)
        if problem is not None:
            raise ValueError(problem)
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
        errors += self._secure_cert_errors()
        if self.dac_source == "imported" and self.dac_storage in ("on-module", "device-key"):
            # on-module: the module holds its DAC; device-key: the device makes its own key.
            errors.append(
                FieldError("dac_source", "imported needs a dac_storage that writes a DAC")
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
        if self.label is not None:
            errors.extend(self._label_errors(self.label))
        return errors[:MAX_REPORTED_ERRORS]

    def _label_errors(self, layout: LabelLayout) -> list[FieldError]:
        # The longest serial number the order names; a per-product counter's are checked when
        # the labels are rendered.
        serials: list[str] = []
        if self.devices is None or len(self.devices) == self.quantity:
            serials += [s for s in (self.serial_for(0), self.serial_for(self.quantity - 1)) if s]
            serials += [d.serial_num for d in self.devices or [] if d.serial_num]
        longest = max(serials, key=len, default="0000000000")
        return fit_errors(
            layout, long_code=self.commissioning.flow != "standard", serial_num=longest
        )

    def _secure_cert_errors(self) -> list[FieldError]:
        sc = self.secure_cert
        if sc is None:
            return []
        if self.dac_storage != "secure-cert":
            return [FieldError("secure_cert", "is only for dac_storage secure-cert")]
        errors: list[FieldError] = []
        if sc.rd_id_uid and not self.commissioning.rotating_device_id:
            errors.append(
                FieldError("secure_cert.rd_id_uid", "needs commissioning.rotating_device_id")
            )
        if sc.key == "ecdsa-peripheral":
            if sc.efuse_key_id is None:
                errors.append(
                    FieldError("secure_cert.efuse_key_id", "is required for ecdsa-peripheral")
                )
            if sc.chip not in ECDSA_CHIPS:
                errors.append(
                    FieldError("secure_cert.chip", f"must be one of {', '.join(ECDSA_CHIPS)}")
                )
        else:
            for name in ("efuse_key_id", "chip"):
                if getattr(sc, name) is not None:
                    errors.append(
                        FieldError(f"secure_cert.{name}", "is only for key ecdsa-peripheral")
                    )
        return errors

    def _spake_errors(self, i: int, d: DeviceOverride) -> list[FieldError]:
        """devices[i].salt/verifier: the verifier needs salt and passcode and must match them."""
        if self.commissioning.dynamic_passcode:
            return [
                FieldError(f"devices[{i}].{name}", "is not allowed with a dynamic passcode")
                for name in ("passcode", "salt", "verifier")
                if getattr(d, name) is not None
            ]
        if d.verifier is None:
            return []
        if d.salt is None or d.passcode is None:
            return [FieldError(f"devices[{i}].verifier", "needs salt and passcode beside it")]
        expected = spake2p.compute_verifier(
            d.passcode, base64.b64decode(d.salt), self.commissioning.iteration_count
        )
        if base64.b64decode(d.verifier) != expected:
            return [
                FieldError(
                    f"devices[{i}].verifier",
                    "does not match passcode, salt and commissioning.iteration_count",
                )
            ]
        return []

    def _device_errors(self, devices: list[DeviceOverride]) -> list[FieldError]:
        errors: list[FieldError] = []
        per_device = {e.key for e in self.extra_entries if e.value is None}
        known = {e.key for e in self.extra_entries}
        serials: dict[str, int] = {}
        uids: dict[str, int] = {}
        for i, d in enumerate(devices):
            errors += self._spake_errors(i, d)
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
