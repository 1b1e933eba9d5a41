"""The onboarding record: what the factory hands on about one built device, declared once.

Everything else is derived from `OnboardingRecord`:
- `onboarding.json` (DESIGN §5) is `record.to_json()`;
- `ImageReady` (messages/devices.py) extends it with the message's own fields;
- the manifest's columns and rows (DESIGN §5 header): each field says which columns it gives
  (`Columns`, in field order); a field without one gives one column of its own name, its value
  as text and None as empty.

Adding a per-device field means declaring it here (and computing it upstream): the builder
carries every field of the same name from the attested device message, and the manifest, the
assembler's chunks and the checked-in schemas follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from matterfab.matter import payload
from matterfab.messages.base import DeviceIndex, Message, ObjectRef, index_str
from matterfab.messages.codec import dumps_indented

Cell = str | int


@dataclass(frozen=True)
class Columns:
    """The manifest columns one record field gives: (name, render(value) → cell), in order."""

    cells: tuple[tuple[str, Callable[[Any], Cell]], ...] = ()


def _text(value: Any) -> Cell:
    return "" if value is None else value


DYNAMIC = "dynamic"
"""What the manifest's passcode, qr_payload and manual_code say for a dynamic-passcode device
(work order `commissioning.dynamic_passcode`): the firmware makes its passcode, so there is no
code to print (its record's qr_payload and manual_code are empty)."""


def _passcode(qr_payload: str) -> str:
    # The manifest's passcode is the one in the QR payload: the record never holds it.
    if not qr_payload:
        return DYNAMIC
    return f"{payload.decode_qr(qr_payload).passcode:08d}"


def _code(value: str) -> str:
    return value or DYNAMIC


def _ref_cells(name: str, column: str) -> tuple[tuple[str, Callable[[Any], Cell]], ...]:
    def key(objects: Any) -> Cell:
        return _text(getattr(getattr(objects, name), "key", None))

    def sha256(objects: Any) -> Cell:
        # The file's digest, as fetched with the line's key and as flashed: for a sealed
        # object its plaintext's (manifest.json gives the sealed object's too), so scripts that
        # check fetched files against manifest.csv keep working.
        ref = getattr(objects, name)
        if ref is None:
            return ""
        return ref.sealed.sha256 if ref.sealed is not None else ref.sha256

    return ((f"{column}_key", key), (f"{column}_sha256", sha256))


# The per-device file each ref of a device stands for (DESIGN §5, §8 `order fetch`): a ref into
# a lot object (ObjectRef.offset set) is cut out and written under this name.
OBJECT_FILES = {
    "partition": "partition.bin",
    "qrcode": "qrcode.png",
    "onboarding": "onboarding.json",
    "dac": "dac.der",
    "nvs_keys": "nvs_keys.bin",
    "secure_cert": "esp_secure_cert.bin",
    "efuse_key": "efuse_key.bin",
}


class OnboardingObjects(Message):
    """The refs of a device's objects that onboarding.json lists (not its own)."""

    partition: ObjectRef
    qrcode: ObjectRef
    dac: ObjectRef | None = Field(None, description="dac.der (absent: on-module, none issued)")
    nvs_keys: ObjectRef | None = None
    secure_cert: ObjectRef | None = Field(
        None, description="esp_secure_cert.bin: DAC, PAI, DAC key (dac_storage secure-cert)"
    )
    efuse_key: ObjectRef | None = Field(
        None,
        description="efuse_key.bin: the DAC key (32-byte scalar) the station burns into the "
        "eFuse block the secure cert names (secure_cert key ecdsa-peripheral)",
    )


class OnboardingRecord(Message):
    """One device's onboarding data as in its `onboarding.json` (fields in manifest order)."""

    index: Annotated[DeviceIndex, Columns((("index", index_str),))]
    device_id: str = Field(description="<order_id>/<index as 7 digits>")
    quantity: Annotated[int, Field(ge=1, description="Devices in the whole order"), Columns()]
    serial_num: str = Field(description="Unique per product, never reused")
    vendor_id: int
    product_id: int
    discriminator: int = Field(ge=0, le=4095)
    qr_payload: Annotated[
        str,
        Field(description="MT: onboarding payload (empty: dynamic passcode, none printed)"),
        Columns((("passcode", _passcode), ("qr_payload", _code))),
    ]
    manual_code: Annotated[
        str,
        Field(description="11 or 21-digit manual pairing code (empty: dynamic passcode)"),
        Columns((("manual_code", _code),)),
    ]
    rd_id_uid: str | None = Field(None, description="Rotating device ID unique ID, hex")
    dac_serial: str = Field(description="DAC serial number, hex (empty: on-module)")
    objects: Annotated[
        OnboardingObjects,
        Columns(_ref_cells("partition", "partition") + _ref_cells("secure_cert", "secure_cert")),
    ]
    line: str | None = Field(
        None,
        description="The production line whose key seals the device's secret objects "
        "(absent: built before lines, nothing sealed)",
    )

    def to_doc(self) -> dict[str, Any]:
        """`onboarding.json` as a JSON-able dict: absent object refs (and offsets) left out."""
        doc = self.model_dump(mode="json", exclude={"objects"})  # objects dumped once, below
        doc["objects"] = self.objects.model_dump(mode="json", exclude_none=True)
        return doc

    def to_json(self) -> bytes:
        """The bytes of `onboarding.json`: `to_doc()` with sorted keys."""
        return dumps_indented(self.to_doc()).encode()

    def manifest_row(self) -> dict[str, Cell]:
        """This device's manifest row, keyed by column (MANIFEST_COLUMNS order)."""
        return {
            column: render(getattr(self, name))
            for name, columns in _COLUMNS.items()
            for column, render in columns.cells
        }


def _columns_of(name: str) -> Columns:
    info = OnboardingRecord.model_fields[name]
    declared = [m for m in info.metadata if isinstance(m, Columns)]
    return declared[0] if declared else Columns(((name, _text),))


_COLUMNS = {name: _columns_of(name) for name in OnboardingRecord.model_fields}
MANIFEST_COLUMNS = tuple(column for c in _COLUMNS.values() for column, _ in c.cells)
