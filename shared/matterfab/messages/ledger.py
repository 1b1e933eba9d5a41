"""`mfg.dac-ledger`: the DACs the signer issued, one record per lot, for the security audit."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from matterfab.lots import MAX_DEVICES
from matterfab.messages.base import DeviceIndex, Message, ObjectRef, OrderId, utcnow


class LedgerDac(Message):
    """One DAC of a ledger lot."""

    dac_serial: str = Field(description="Certificate serial number, hex")
    device_id: str
    index: DeviceIndex
    subject: str = Field(description="RFC 4514 subject")
    not_before: datetime
    not_after: datetime
    dac_sha256: str = Field(description="SHA-256 of the DAC DER, hex")
    issued_at: datetime


class LedgerLot(Message):
    """The DACs the signer issued for one lot (`dac-ledger-lot/v1`), keyed by `lot_id`."""

    type: Literal["dac-ledger-lot/v1"] = "dac-ledger-lot/v1"
    order_id: OrderId
    lot_id: str = Field(description="device_id of the lot's first device")
    attestation_profile: str
    vendor_id: int
    product_id: int
    pai_skid: str = Field(description="Issuing PAI's subject key identifier, hex")
    dacs_lot: ObjectRef = Field(description="The lot's dacs.lot: every DAC below, write-once")
    dacs: list[LedgerDac] = Field(min_length=1, max_length=MAX_DEVICES)
    at: datetime = Field(default_factory=utcnow)
