"""The fleet's stored objects, one model each (written once; see keys.py for where)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from matterfab.messages.base import ObjectRef, utcnow

STATES = ("allocated", "built", "flashed", "bound", "scrapped", "revoked", "reissued")
State = Literal["allocated", "built", "flashed", "bound", "scrapped", "revoked", "reissued"]


class Record(BaseModel):
    """Base of fleet records: strict, frozen, JSON in the bucket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        """The stored bytes: compact JSON."""
        return self.model_dump_json().encode()


class Pointer(Record):
    """Where an identity (serial, DAC serial, QR payload) leads: one device."""

    device_id: str
    generation: int = Field(0, ge=0, description="For a DAC pointer: the DAC's generation")


class DeviceImage(Record):
    """One generation of a device's image: its DAC and onboarding codes (0: the pipeline's)."""

    device_id: str
    order_id: str
    index: int
    generation: int = Field(ge=0)
    serial_num: str
    vendor_id: int
    product_id: int
    discriminator: int
    qr_payload: str
    manual_code: str
    dac_serial: str = Field(description="Hex; empty for on-module devices")
    objects: dict[str, ObjectRef] = Field(default_factory=dict, description="Flashed objects")
    source: Literal["pipeline", "reissue"] = "pipeline"
    at: datetime | None = Field(
        default_factory=utcnow,
        description="When recorded; None for a generation-0 image read from its labels.lot",
    )


class Scrap(Record):
    """A device taken out of production for good (its identities stay taken)."""

    device_id: str
    reason: str
    by: str
    station_id: str | None = None
    at: datetime = Field(default_factory=utcnow)


class Revocation(Record):
    """One DAC revoked: who, when, why (RFC 5280 reason name)."""

    dac_serial: str
    profile: str
    device_id: str
    generation: int
    reason: str
    by: str
    at: datetime = Field(default_factory=utcnow)


class CrlIssue(Record):
    """A CRL number taken: what that CRL holds (the chain of these only grows)."""

    profile: str
    number: int = Field(ge=1)
    sha256: str
    size: int
    revoked: int = Field(ge=0, description="Entries in this CRL")
    next_update: datetime
    by: str
    at: datetime = Field(default_factory=utcnow)


class CertifyGrant(Record):
    """Device D may be certified again, as generation n (a device-key device's next CSR).

    Written by `device reissue` for dac_storage device-key devices, after the old DAC is
    revoked. The device-key signer consults `fleet.reissue.certify_generation` before it
    refuses a second CSR for a device: a grant of generation n lets exactly one more DAC be
    stored, under the generation-n keys.
    """

    device_id: str
    generation: int = Field(ge=1)
    revoked_dac_serial: str
    by: str
    at: datetime = Field(default_factory=utcnow)
