"""Common base of every topic message: strict pydantic models with a versioned `type`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Keys live in the bucket's key module; re-exported here for the messages that name objects.
from matterfab.bucket.keys import device_key as device_key
from matterfab.bucket.keys import index_str as index_str
from matterfab.bucket.keys import order_key as order_key

# Bump a message's version (the "/v1" in its `type`) only for a breaking change: a removed or
# renamed field, or a field whose meaning changes. Adding an optional field is not breaking.
SCHEMA_VERSION = 1

ORDER_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
ORDER_ID_RE = re.compile(ORDER_ID_PATTERN)

OrderId = Annotated[
    str,
    StringConstraints(pattern=ORDER_ID_PATTERN),
    Field(description="Order identifier: 1..64 of [A-Za-z0-9._-]", examples=["WO-2026-000123"]),
]
# Production lines (DESIGN §9): an order's secrets are sealed to its line's key.
LINE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
DEFAULT_LINE = "local"

DeviceIndex = Annotated[
    int, Field(ge=0, lt=1_000_000, description="Zero-based position of the device in its order")
]


def utcnow() -> datetime:
    """The current time in UTC (every timestamp on the wire is UTC)."""
    return datetime.now(UTC)


def device_id(order_id: str, index: int) -> str:
    """The device identifier `<order_id>/<index>` (DESIGN §4)."""
    return f"{order_id}/{index_str(index)}"


class Message(BaseModel):
    """Base of all topic messages: unknown fields are refused so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Sealing(BaseModel):
    """How a sealed object was sealed (matterfab/sealing.py), and the plaintext it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: str = Field(description="The production line whose key it is sealed to")
    key: str = Field(description="Fingerprint of that line key (see `matterfab line show`)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the plaintext, hex")
    size: int = Field(ge=0, description="Size of the plaintext in bytes")


class ObjectRef(BaseModel):
    """A write-once object in the bucket, with its digest so every reader can check it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Object key in the bucket")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the object, hex")
    size: int = Field(ge=0, description="Size in bytes")
    offset: int | None = Field(
        None,
        ge=0,
        description="Byte offset of these `size` bytes within a lot object (DESIGN §5 Lots); "
        "absent: the ref is the whole object",
    )
    sealed: Sealing | None = Field(
        None,
        description="Present when the object is sealed to a line (HPKE): `sha256` and `size` "
        "above are the sealed bytes', these the plaintext's",
    )
