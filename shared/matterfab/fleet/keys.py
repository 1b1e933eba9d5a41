"""The fleet records' object keys: re-exported from the bucket's one key module.

Every key is declared in `matterfab/bucket/keys.py` (its docstring lists the fleet's). Fleet
code keeps importing them from here under their short names.

Pointers are written when a device leaves the build path: when a station records it flashed
(the assembler's station side), by `device reindex` on demand, and by reissue / device-key
DACs. Generation-0 image records are the builder's `labels.lot` onboarding pieces.
"""

from __future__ import annotations

from matterfab.bucket.keys import (
    CERTIFY_RE,
    FLEET,
    FLEET_DEVICES,
    IMAGE_RE,
    REISSUE_RE,
    SCRAPPED,
    certify_key,
    crl_key,
    crl_prefix,
    dac_key,
    generation_key,
    image_key,
    labels_lot_key,
    lots_prefix,
    mac_key,
    qr_key,
    reissue_key,
    revocation_key,
    revocations_prefix,
    scrap_key,
    serial_key,
    serial_prefix,
)
from matterfab.bucket.keys import fleet_device_prefix as device_prefix
from matterfab.bucket.keys import fleet_order_prefix as order_prefix

PREFIX = FLEET
DEVICES = FLEET_DEVICES

__all__ = [
    "CERTIFY_RE",
    "DEVICES",
    "IMAGE_RE",
    "PREFIX",
    "REISSUE_RE",
    "SCRAPPED",
    "certify_key",
    "crl_key",
    "crl_prefix",
    "dac_key",
    "device_prefix",
    "generation_key",
    "image_key",
    "labels_lot_key",
    "lots_prefix",
    "mac_key",
    "order_prefix",
    "qr_key",
    "reissue_key",
    "revocation_key",
    "revocations_prefix",
    "scrap_key",
    "serial_key",
    "serial_prefix",
]
