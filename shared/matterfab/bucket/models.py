"""One pydantic model per stored JSON object that had none: the allocator's and assembler's state.

Each model's `to_bytes` writes exactly the bytes the pipeline has always written for that
object (write-once objects: a redelivery must find identical bytes), and `from_bytes` reads
every version of it still in buckets (older claims without `lot_size`, claim records from
before the identity registry). tests/unit/test_bucket_models.py builds each object the old way
and compares.

Objects whose models live elsewhere (the work order, station results, fleet records, firmware
bundles, presence, line keys, device-key records) are listed with these in
`matterfab/bucket/catalog.py`, which exports every schema to `schemas/bucket/`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel

from matterfab.messages.base import ObjectRef

if TYPE_CHECKING:
    from matterfab.messages.work_order import WorkOrder


class BucketObject(BaseModel):
    """Base of the bucket's own object models: strict, frozen, read with `from_bytes`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        """The object from its stored bytes (ValidationError when they are not one)."""
        return cls.model_validate_json(raw)

    def to_doc(self) -> dict[str, Any]:
        """The JSON document as stored: optional fields absent when unset."""
        return self.model_dump(mode="json", exclude_unset=True)


class OrderClaim(BucketObject):
    """`orders/<id>/claim.json`: what one order was given, once (allocator, write-once)."""

    order_id: str
    serial_start: int = Field(
        description="First per-product serial counter value (for devices without a serial)"
    )
    serial_count: int = Field(description="Counter values the order holds from serial_start")
    discriminator_start: int = Field(description="Discriminator of device 0; then +1 each")
    lot_size: int | None = Field(
        None,
        description="Devices per lot, fixed when the order is accepted; absent in claims "
        "written before lots (the default for the order's iteration count applies)",
    )
    line_key: str | None = Field(
        None,
        description="Fingerprint of the line key the order is sealed to, fixed at acceptance "
        "so a `line rotate` never splits an order; absent in claims written before lines",
    )

    def __init__(
        self,
        order_id: str,
        serial_start: int,
        serial_count: int,
        discriminator_start: int,
        lot_size: int | None = None,
        line_key: str | None = None,
    ) -> None:
        # Positional, like the dataclass it replaces (allocation.Claim): callers build it so.
        fields: dict[str, Any] = {
            "order_id": order_id,
            "serial_start": serial_start,
            "serial_count": serial_count,
            "discriminator_start": discriminator_start,
            "lot_size": lot_size,
            "line_key": line_key,
        }
        super().__init__(**fields)

    def to_json(self) -> dict[str, Any]:
        """The stored document: `lot_size` and `line_key` only when set."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_bytes(self) -> bytes:
        """The stored bytes (json.dumps with its default separators, field order)."""
        return json.dumps(self.to_json()).encode()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OrderClaim:
        """The claim from its stored document."""
        return cls.model_validate(d)

    def lot_size_of(self, order: WorkOrder) -> int:
        """The order's devices per lot: as claimed, else the default for its iteration count."""
        from matterfab import lots  # late: lots imports nothing of the bucket's models

        if self.lot_size is not None:
            return self.lot_size
        return lots.lot_size(order.commissioning.iteration_count)


class OrderFields(BaseModel):
    """The fields services read of a stored `order.json`, leniently (absent: None).

    `order.json` is the accepted WorkOrder's encoded bytes (its model and schema are
    WorkOrder's). Readers that need a field or two (the quantity, the label layout, the
    dac_storage) read this view: it tolerates orders written by older versions, and partial
    documents in handler tests, as the dict reads it replaces did.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    order_id: str | None = None
    quantity: int | None = None
    product: dict[str, Any] = Field(default_factory=dict)
    attestation_profile: str | None = None
    dac_storage: str | None = None
    firmware: str | None = None
    label: dict[str, Any] | None = None
    line: str | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> OrderFields:
        """The view of an order's stored bytes."""
        return cls.model_validate_json(raw)


class ClaimRecord(BucketObject):
    """`state/products/<VVVV>-<PPPP>/claims/<seq>.json`: one accepted order in the claim chain.

    The identity registry (docs/objects-and-messages.md): the order's counter ranges and every
    serial run and unique ID it holds. Records written before the registry hold the counter
    ranges only (no `order_sha256`, `devices`, `serials`, `rd_id_uids`).
    """

    order_id: str
    order_sha256: str | None = Field(None, description="SHA-256 of the order's order.json")
    serial_start: int
    serial_count: int
    discriminator_start: int
    devices: int | None = Field(None, description="The order's quantity")
    serials: list[tuple[str, int, int, int]] | None = Field(
        None, description="Serial runs held: [head, digits, lo, hi] (canonical form)"
    )
    rd_id_uids: list[str] | None = Field(None, description="Rotating-device-ID unique IDs, hex")

    def to_bytes(self) -> bytes:
        """The stored bytes: compact JSON, sorted keys."""
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":")).encode()


class AllocatedIdentity(BucketObject):
    """One device of an allocation chunk: the identity drawn for it once (never changes)."""

    index: int = Field(ge=0, description="Zero-based position of the device in its order")
    serial_num: str
    discriminator: int
    passcode: int
    salt_b64: str = Field(description="SPAKE2+ salt, base64")
    rd_id_uid: str | None = Field(description="Rotating-device-ID unique ID, hex (null: none)")
    nvs_keys_wrapped: str | None = Field(
        None, description="xts orders: the device's NVS XTS keys, wrapped (never plaintext)"
    )

    def to_doc(self) -> dict[str, Any]:
        """As stored: `nvs_keys_wrapped` only when the order is encrypted."""
        doc = self.model_dump(mode="json")
        if doc["nvs_keys_wrapped"] is None:
            del doc["nvs_keys_wrapped"]
        return doc


class AllocationChunk(RootModel[list[AllocatedIdentity]]):
    """`orders/<id>/allocation/<chunk>.json`: the identities of up to 1,000 devices (write-once)."""

    model_config = ConfigDict(frozen=True)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AllocationChunk:
        """The chunk from its stored bytes."""
        return cls.model_validate_json(raw)

    @classmethod
    def of(cls, devices: list[dict[str, Any]]) -> AllocationChunk:
        """The chunk of identities as `allocation.allocate_chunk` returns them."""
        return cls.model_validate(devices)

    def to_docs(self) -> list[dict[str, Any]]:
        """The identities as JSON documents (what the allocator's lot messages are made from)."""
        return [d.to_doc() for d in self.root]

    def to_bytes(self) -> bytes:
        """The stored bytes (json.dumps with its default separators)."""
        return json.dumps(self.to_docs()).encode()


class ReadyRecord(BaseModel):
    """One device in a ready chunk: its onboarding record (`onboarding.json`'s fields), that
    object's ref as `onboarding`, and for builders before lots its QR PNG (`qrcode_png_b64`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    index: int = Field(ge=0, description="Zero-based position of the device in its order")

    def to_doc(self) -> dict[str, Any]:
        """The entry as stored (every field it was given, nothing added)."""
        return self.model_dump(mode="json")


class ReadyChunk(BucketObject):
    """`orders/<id>/ready/<uuid>.json`: devices one assembler found ready in one flush.

    The assembler writes them and builds the manifest from them; the allocator's stall watch
    counts the indices in them. A device in two chunks counts once.
    """

    order_id: str
    records: list[ReadyRecord]

    def indices(self) -> frozenset[int]:
        """The device indices the chunk holds."""
        return frozenset(r.index for r in self.records)

    @classmethod
    def of(cls, order_id: str, records: list[dict[str, Any]]) -> ReadyChunk:
        """A chunk of entries as the assembler makes them (`record_of`)."""
        return cls.model_validate({"order_id": order_id, "records": records})

    def to_bytes(self) -> bytes:
        """The stored bytes: json.dumps with sorted keys, default separators."""
        return self.encode(self.order_id, [r.to_doc() for r in self.records])

    @staticmethod
    def encode(order_id: str, records: list[dict[str, Any]]) -> bytes:
        """`ReadyChunk.of(order_id, records).to_bytes()`, without the model in between.

        The assembler's entries are dumps of messages it has validated already (`record_of`),
        and a ReadyRecord keeps every field as given: what validating each entry again and
        dumping it back would add is its index check, done here. Every flush of an assembler
        writes one chunk, so this is per device (a tenth of the assembler's CPU).
        """
        for n, record in enumerate(records):
            index = record.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"records[{n}].index: must be an integer >= 0, got {index!r}")
        return json.dumps({"order_id": order_id, "records": records}, sort_keys=True).encode()


class Emitted(BucketObject):
    """`orders/<id>/emitted.json`: where `mfg.devices.allocated` ended once the order was sent.

    A hint, overwritten: a restarted allocator re-drives the order when the log now ends
    before these offsets.
    """

    topic: str
    ends: dict[int, int] = Field(description="Partition → end offset")

    def to_bytes(self) -> bytes:
        """The stored bytes: sorted keys (partitions numerically, as written since the start)."""
        return json.dumps({"topic": self.topic, "ends": dict(self.ends)}, sort_keys=True).encode()


class MacClaim(BucketObject):
    """`macs/<mac>.json`: which device a MAC is bound to (assembler, write-once)."""

    mac: str = Field(description="aa:bb:cc:dd:ee:ff")
    device_id: str

    def to_bytes(self) -> bytes:
        """The stored bytes (json.dumps with its default separators)."""
        return json.dumps({"mac": self.mac, "device_id": self.device_id}).encode()


class ProfileSummary(BucketObject):
    """`profiles/<name>.json`: an attestation profile's public part (no key material, no PIN)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    kind: str | None = Field(None, description="test, production or cd-only")
    issues_dacs: bool = Field(
        True, description="False for a CD-only profile; absent in summaries before it existed"
    )
    vendor_id: int
    product_id: int | None = None
    dac_validity_days: int | None = None
    pai_pem: str | None = None
    paa_pem: str | None = None
    cd_der_base64: str | None = None
    key_source_type: str | None = None

    def to_bytes(self) -> bytes:
        """The stored bytes: sorted keys, indent 1."""
        return json.dumps(self.to_doc(), sort_keys=True, indent=1).encode()


class Manifest(BucketObject):
    """`orders/<id>/manifest.json`: the order summary, every device, the digest of every object.

    Written last by the assembler (its completion mark), as compact JSON with sorted keys, by a
    streaming writer (services/assembler/manifest.py) that never holds the document as objects;
    this model is its reader. Device entries are the manifest.csv columns plus `objects` refs.
    Fields a newer assembler adds are kept (extra allowed), so an older reader still reads it.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    order_id: str
    quantity: int
    product: dict[str, Any]
    mfg_date: str
    attestation_profile: str
    dac_storage: str = "factory-nvs"
    objects: dict[str, ObjectRef] = Field(description="manifest.csv and qrcodes.zip")
    devices: list[dict[str, Any]] = Field(description="One entry per device, by index")
    firmware: dict[str, str] | None = Field(None, description="The bundle's name and sha256")
    line: str | None = Field(None, description="The line its devices' secrets are sealed to")

    def to_bytes(self) -> bytes:
        """The stored bytes, as the streaming writer makes them (for tests and small orders)."""
        doc = self.to_doc()
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


class ManifestDevices(BaseModel):
    """The device entries of a stored manifest, read leniently (backfill reads nothing else)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    devices: list[dict[str, Any]]

    @classmethod
    def from_bytes(cls, raw: bytes) -> ManifestDevices:
        """The view of a manifest's stored bytes."""
        return cls.model_validate_json(raw)


class PlainJson(BucketObject):
    """Objects stored as `json.dumps(document)` with its default separators, in field order."""

    def to_bytes(self) -> bytes:
        """The stored bytes."""
        return json.dumps(self.to_doc()).encode()


class BatchDac(BaseModel):
    """One DAC of an import batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: str = Field(description="SHA-256 of the DAC's DER, hex")
    name: str = Field(description="Where it came from (file and position)")
    serial: str = Field(description="The certificate's serial, hex")


class ImportBatch(PlainJson):
    """`dac-pool/<profile>/batches/<batch>.json`: one `dac import` (write-once)."""

    batch: str
    profile: str
    count: int = Field(ge=0)
    imported_at: str = Field(description="UTC, ISO 8601")
    dacs: list[BatchDac] = Field(description="In import order")


class ImportedDac(PlainJson):
    """`dac-pool/<profile>/dacs/<fingerprint>.json`: one imported DAC and its wrapped key."""

    fingerprint: str
    batch: str
    name: str
    serial: str
    dac_b64: str = Field(description="The DAC, DER, base64")
    key_wrapped: str = Field(description="Its private key, AES-256-GCM wrapped (never plain)")


class PoolClaim(PlainJson):
    """`dac-pool/<profile>/claims/<fingerprint>.json`: the device an imported DAC went to."""

    order_id: str
    index: int = Field(ge=0)


class DacChoice(PlainJson):
    """`orders/<id>/imported-dacs/<index>.json`: which imported DAC a device took."""

    fingerprint: str
