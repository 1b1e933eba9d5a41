"""`mfg.station-results`: what a factory station did with one image (keyed by `device_id`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from matterfab.messages.base import DeviceIndex, Message, OrderId, utcnow


class StationResult(Message):
    """A flash attempt's outcome on the line (`station-result/v1`)."""

    type: Literal["station-result/v1"] = "station-result/v1"
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    serial_num: str
    station_id: str
    line: str
    status: Literal["flashed", "failed"]
    mac: str | None = Field(None, description="MAC read from the device, aa:bb:cc:dd:ee:ff")
    reason: str | None = Field(None, description="Why it failed")
    attempts: int = Field(1, ge=1)
    final: bool = Field(True, description="False when the image goes back to be flashed again")
    at: datetime = Field(default_factory=utcnow)
