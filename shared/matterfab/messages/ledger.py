"""`mfg.dac-ledger`: one entry per DAC issued, for the security officer's audit."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from matterfab.messages.base import DeviceIndex, Message, OrderId, utcnow


class LedgerEntry(Message):
    """A DAC the signer issued (`dac-ledger/v1`), keyed by its serial (hex)."""

    type: Literal["dac-ledger/v1"] = "dac-ledger/v1"
    dac_serial: str = Field(description="Certificate serial number, hex")
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    attestation_profile: str
    vendor_id: int
    product_id: int
    subject: str = Field(description="RFC 4514 subject")
    not_before: datetime
    not_after: datetime
    pai_skid: str = Field(description="Issuing PAI's subject key identifier, hex")
    dac_sha256: str = Field(description="SHA-256 of the DAC DER, hex")
    issued_at: datetime = Field(default_factory=utcnow)
