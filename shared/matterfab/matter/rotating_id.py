"""Rotating device identifier (Matter Core Specification §5.4.2.4.5).

    RotatingDeviceId = RotationCounter (2 bytes, little-endian)
                       || SuffixBytes(SHA-256(RotatingDeviceIdUniqueId || RotationCounter), 16)

18 bytes in all. This is what the Matter SDK's `AdditionalDataPayloadGenerator` computes (and its
`TestAdditionalDataPayload` vectors check); it is not an HKDF. The device advertises it in the
`RI` DNS-SD key and the additional-data payload; matterfab computes it only to check the unique
IDs it writes into factory data against the SDK's vectors.
"""

from __future__ import annotations

import hashlib

from matterfab.errors import invalid
from matterfab.matter.identity import validate_rd_id_uid

COUNTER_MAX = 0xFFFF
_SUFFIX_LEN = 16
ROTATING_ID_LEN = 2 + _SUFFIX_LEN


def rotating_device_id(unique_id: bytes, counter: int) -> bytes:
    """Return the 18-byte rotating device ID for `unique_id` at lifetime counter `counter`."""
    unique_id = validate_rd_id_uid(unique_id)
    if not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter <= COUNTER_MAX:
        raise invalid("counter", f"must be an integer in 0..{COUNTER_MAX} (16 bits)")
    counter_le = counter.to_bytes(2, "little")
    digest = hashlib.sha256(unique_id + counter_le).digest()
    return counter_le + digest[-_SUFFIX_LEN:]
