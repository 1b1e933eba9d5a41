"""`mfg.order-events`: what happened to an order (keyed by `order_id`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from matterfab.errors import FieldError
from matterfab.messages.base import Message, OrderId, utcnow

OrderStatus = Literal["accepted", "rejected", "progress", "completed", "failed"]


class ErrorItem(BaseModel):
    """One broken rule: the field (dotted path) and what rule it broke."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    message: str

    @classmethod
    def of(cls, e: FieldError) -> ErrorItem:
        """Convert a library FieldError."""
        return cls(field=e.field, message=e.message)


class ManifestRef(BaseModel):
    """Where the finished order's manifest is, and its digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class OrderEvent(Message):
    """A status change or progress report of one order (`order-event/v1`)."""

    type: Literal["order-event/v1"] = "order-event/v1"
    order_id: str = Field(description="The order (free text when a rejected order had none)")
    status: OrderStatus
    errors: list[ErrorItem] = Field(default_factory=list)
    ready: int = Field(0, ge=0, description="Devices whose image is ready")
    flashed: int = Field(0, ge=0, description="Devices a station reported flashed")
    failed: int = Field(0, ge=0, description="Devices a station reported failed for good")
    bound: int = Field(0, ge=0, description="Flashed devices bound to the MAC read from them")
    scrapped: int = Field(0, ge=0, description="Devices scrapped (`device scrap`)")
    revoked: int = Field(0, ge=0, description="Devices whose current DAC is revoked")
    quantity: int = Field(0, ge=0)
    manifest: ManifestRef | None = None
    at: datetime = Field(default_factory=utcnow)


__all__ = ["ErrorItem", "ManifestRef", "OrderEvent", "OrderId", "OrderStatus"]
