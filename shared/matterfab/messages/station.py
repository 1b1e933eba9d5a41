"""`mfg.station-results`: what a factory station did with one image (keyed by `device_id`).

A device ends in exactly one *final* outcome: flashed, or failed for good. A station that
reaches one writes it, write-once, to `station_record_key(order_id, index)` before publishing
it, so the bucket holds the truth about every device (the assembler rebuilds bindings from
it) and a redelivered image is never flashed onto a second board. Failures with `final=False`
are reports only: the image went back to `mfg.images.ready` to be flashed again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from matterfab.bucket.keys import station_record_key as station_record_key
from matterfab.bucket.keys import station_records_prefix as station_records_prefix
from matterfab.messages.base import DeviceIndex, Message, OrderId, utcnow

MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"


class LabelPrint(BaseModel):
    """What became of the device's label at the station (`station run --print-zpl|--print-cmd`).

    Printed right after the flash, before the result is recorded; a label that does not print
    is retried, then reported here as failed: it never holds back or loses the flash result.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["printed", "failed"]
    attempts: int = Field(ge=0, description="Print attempts (0: the label could not be laid out)")
    reason: str | None = Field(None, description="Why the last attempt failed (one line)")


class StationResult(Message):
    """A flash attempt's outcome on the line (`station-result/v1`)."""

    type: Literal["station-result/v1"] = "station-result/v1"
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    serial_num: str
    station_id: str = Field(description="The station that flashed (or failed to flash) it")
    line: str = Field(description="The production line (consumer group) of the station")
    status: Literal["flashed", "failed"]
    mac: str | None = Field(
        None, pattern=MAC_PATTERN, description="MAC read from the device, aa:bb:cc:dd:ee:ff"
    )
    reason: str | None = Field(None, description="Why it failed")
    attempts: int = Field(1, ge=1, description="Flash attempts on this station for this image")
    requeues: int = Field(0, ge=0, description="Times the image had gone back before this")
    dac_serial: str | None = Field(
        None, description="dac_storage device-key: serial (hex) of the DAC written to the device"
    )
    dac_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="device-key: SHA-256 of that DAC's DER"
    )
    final: bool = Field(True, description="False when the image goes back to be flashed again")
    label: LabelPrint | None = Field(
        None, description="The label printed for a flashed device (absent: the station prints none)"
    )
    at: datetime = Field(default_factory=utcnow)
