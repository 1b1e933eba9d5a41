"""Every object key of the fleet records, in one place (DESIGN §5 style: bucket-relative).

orders/<order_id>/lots/<first index>/labels.lot   the builder's: each device's onboarding.json
                                                  piece is its generation-0 image (no fleet write)
fleet/by-serial/<serial, URL-quoted>/<VVVVPPPP>.json  Pointer: a product's serial → device
fleet/by-dac/<dac serial hex>.json                    Pointer: a DAC serial → device, generation
fleet/by-qr/<sha256 of vid:pid:discriminator:passcode>.json   Pointer: an onboarding payload
macs/<mac without colons>.json                        the assembler's MAC claim (stations.py)
fleet/devices/<order_id>/<index>/image-<gen>-<dac serial>.json   DeviceImage of generation gen
fleet/devices/<order_id>/<index>/scrapped.json        Scrap
fleet/devices/<order_id>/<index>/certify-<gen>.json   CertifyGrant (device-key reissue)
fleet/devices/<order_id>/<index>/reissue-<gen>.json   ReissueClaim (generation n is being made)
orders/<order_id>/devices/<index>/gen-<gen>/<file>    a reissued generation's flashed files
fleet/revocations/<profile>/<dac serial hex>.json     Revocation (one per DAC, ever)
fleet/crl/<profile>/<number, 10 digits>.json          CrlIssue (the number chain), + .der

Pointers are written when a device leaves the build path: when a station records it flashed
(the assembler's station side), by `device reindex` on demand, and by reissue / device-key DACs.

A QR pointer is keyed by a digest so that the passcode never appears in a key name, and so
that any payload encoding the same vendor, product, discriminator and passcode finds it.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from matterfab import lots
from matterfab.messages.base import device_key, index_str, order_key

PREFIX = "fleet/"
DEVICES = f"{PREFIX}devices/"
IMAGE_RE = re.compile(r"image-(\d{4})-([0-9a-f]*)\.json$")
CERTIFY_RE = re.compile(r"certify-(\d{4})\.json$")
REISSUE_RE = re.compile(r"reissue-(\d{4})\.json$")
SCRAPPED = "scrapped.json"


def lots_prefix(order_id: str) -> str:
    """Prefix of every lot object of an order (`orders/<id>/lots/`)."""
    return order_key(order_id, "lots/")


def labels_lot_key(order_id: str, first: int) -> str:
    """The builder's `labels.lot` of the lot starting at `first`: its onboarding.json pieces
    are the lot's generation-0 image records."""
    return lots.lot_key(order_id, first, lots.LABELS)


def serial_key(vendor_id: int, product_id: int, serial_num: str) -> str:
    """Pointer of a product's serial number."""
    return f"{serial_prefix(serial_num)}{vendor_id:04X}{product_id:04X}.json"


def serial_prefix(serial_num: str) -> str:
    """Prefix of a serial's pointers (one per product that has it: serials are per product)."""
    return f"{PREFIX}by-serial/{quote(serial_num, safe='')}/"


def dac_key(dac_serial: str) -> str:
    """Pointer of a DAC serial (lowercase hex, as the ledger writes it)."""
    return f"{PREFIX}by-dac/{dac_serial.lower()}.json"


def qr_key(vendor_id: int, product_id: int, discriminator: int, passcode: int) -> str:
    """Pointer of an onboarding payload's identity (a digest: no passcode in key names)."""
    text = f"{vendor_id}:{product_id}:{discriminator}:{passcode}"
    return f"{PREFIX}by-qr/{hashlib.sha256(text.encode()).hexdigest()}.json"


def mac_key(mac: str) -> str:
    """The assembler's claim of a MAC (aa:bb:cc:dd:ee:ff or 12 hex digits)."""
    return f"macs/{mac.lower().replace(':', '').replace('-', '')}.json"


def device_prefix(order_id: str, index: int) -> str:
    """Prefix of one device's records."""
    return f"{DEVICES}{order_id}/{index_str(index)}/"


def order_prefix(order_id: str) -> str:
    """Prefix of every device record of an order."""
    return f"{DEVICES}{order_id}/"


def image_key(order_id: str, index: int, generation: int, dac_serial: str) -> str:
    """A device's image record of one generation (0: built by the pipeline)."""
    return f"{device_prefix(order_id, index)}image-{generation:04d}-{dac_serial}.json"


def scrap_key(order_id: str, index: int) -> str:
    """A device's scrap record."""
    return device_prefix(order_id, index) + SCRAPPED


def certify_key(order_id: str, index: int, generation: int) -> str:
    """The grant that lets device-key device be certified again, as generation `generation`."""
    return f"{device_prefix(order_id, index)}certify-{generation:04d}.json"


def reissue_key(order_id: str, index: int, generation: int) -> str:
    """The claim of generation `generation` of a device (reissue)."""
    return f"{device_prefix(order_id, index)}reissue-{generation:04d}.json"


def generation_key(order_id: str, index: int, generation: int, name: str) -> str:
    """Object key of generation n's file `name` (generation 0 is the pipeline's own key)."""
    if generation == 0:
        return device_key(order_id, index, name)
    return device_key(order_id, index, f"gen-{generation:04d}/{name}")


def revocation_key(profile: str, dac_serial: str) -> str:
    """The one revocation record a DAC can have."""
    return f"{PREFIX}revocations/{profile}/{dac_serial.lower()}.json"


def revocations_prefix(profile: str) -> str:
    """Prefix of every revocation of a profile's PAI."""
    return f"{PREFIX}revocations/{profile}/"


def crl_prefix(profile: str) -> str:
    """Prefix of a profile's CRL number chain."""
    return f"{PREFIX}crl/{profile}/"


def crl_key(profile: str, number: int, ext: str = "json") -> str:
    """A CRL number's record (`json`) or the CRL itself (`der`)."""
    return f"{crl_prefix(profile)}{number:010d}.{ext}"
