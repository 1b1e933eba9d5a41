"""`mfg.dead-letter`: messages a service could not process, with the reason."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from matterfab.messages.base import Message, utcnow
from matterfab.messages.events import ErrorItem

MAX_PAYLOAD_CHARS = 64 * 1024  # keep the dead letter small even when the poison message is not


class DeadLetter(Message):
    """A message set aside by a service (`dead-letter/v1`)."""

    type: Literal["dead-letter/v1"] = "dead-letter/v1"
    service: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    reason: str = Field(description="Error code: invalid_input, unknown_type, integrity, ...")
    errors: list[ErrorItem] = Field(default_factory=list)
    payload: str = Field(description="The original value (UTF-8, replaced if invalid), truncated")
    at: datetime = Field(default_factory=utcnow)
