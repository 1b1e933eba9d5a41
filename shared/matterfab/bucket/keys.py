"""Every object key of the bucket, in one place (DESIGN §5; bucket-relative).

One function per object (or per family of objects, with its listing prefix beside it). No other
module of the library writes a key literal: tests/unit/test_bucket_keys.py scans the source.
This module imports nothing of matterfab, so every other module (messages included) can use it.

```
orders/<id>/order.json, claim.json, emitted.json          the allocator's order objects
orders/<id>/allocation/<chunk, 5 digits>.json              the allocator's identity chunks
orders/<id>/ready/<uuid hex>.json                          the assembler's ready chunks
orders/<id>/manifest.json, manifest.csv, qrcodes.zip       the assembler's outputs
orders/<id>/bindings.csv, bindings-failed.csv, bindings-scrapped.csv
orders/<id>/lots/<first index>/{dacs,labels,images}.lot    lot objects (matterfab/lots.py)
orders/<id>/devices/<index>/<file>, …/gen-<n>/<file>       per-device files
orders/<id>/station/<index>.json                           a device's final station outcome
orders/<id>/device-dacs/<index>/<generation>.json          device-key DACs
orders/<id>/imported-dacs/<index>.json                     which imported DAC a device took
state/products/<VVVV>-<PPPP>/claims/<seq, 10 digits>.json  the claim chain (identity registry)
device-keys/<VVVV>/<PPPP>/<public key sha256>.json         a certified public key's claim
profiles/<name>.json                                       attestation-profile summaries
firmware/<name>/bundle.json (+ its files)                  firmware bundles
lines/<line>/keys/<version, 6 digits>.json                 a line's public keys
lines/<line>/stations/<station_id>.json                    a station's presence
macs/<mac, 12 hex digits>.json                             a MAC's claim
dac-pool/<profile>/{batches,dacs,claims}/<…>.json          imported DACs
fleet/…                                                    after-the-line records (below)
```

Fleet records (after the line):

```
orders/<id>/lots/<first>/labels.lot                   generation-0 image records (builder's)
fleet/by-serial/<serial, URL-quoted>/<VVVVPPPP>.json  Pointer: a product's serial → device
fleet/by-dac/<dac serial hex>.json                    Pointer: a DAC serial → device, generation
fleet/by-qr/<sha256 of vid:pid:discriminator:passcode>.json   Pointer: an onboarding payload
fleet/devices/<order_id>/<index>/image-<gen>-<dac serial>.json   DeviceImage of generation gen
fleet/devices/<order_id>/<index>/scrapped.json        Scrap
fleet/devices/<order_id>/<index>/certify-<gen>.json   CertifyGrant (device-key reissue)
fleet/devices/<order_id>/<index>/reissue-<gen>.json   ReissueClaim (generation n is being made)
fleet/revocations/<profile>/<dac serial hex>.json     Revocation (one per DAC, ever)
fleet/crl/<profile>/<number, 10 digits>.json          CrlIssue (the number chain), + .der
```

A QR pointer is keyed by a digest so that the passcode never appears in a key name, and so
that any payload encoding the same vendor, product, discriminator and passcode finds it.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

# Object names inside an order's folder (also the names `order fetch` writes them under).
ORDER_JSON = "order.json"
CLAIM_JSON = "claim.json"
EMITTED_JSON = "emitted.json"
MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
QRCODES_ZIP = "qrcodes.zip"
BINDINGS_CSV = "bindings.csv"
BINDINGS_FAILED_CSV = "bindings-failed.csv"
BINDINGS_SCRAPPED_CSV = "bindings-scrapped.csv"
# Lot objects (matterfab/lots.py)
DACS = "dacs.lot"  # the signer's: one DER certificate per device (`dac.der`)
LABELS = "labels.lot"  # the builder's: `qrcode.png` and `onboarding.json` per device
# The builder's, what stations flash, each piece sealed to the order's line on its own:
# `partition.bin` (+ `nvs_keys.bin`, `esp_secure_cert.bin`, `efuse_key.bin`) per device
IMAGES = "images.lot"

ORDERS = "orders/"
STATE_PRODUCTS = "state/products/"
CLAIMS_DIR = "/claims/"
PROFILES = "profiles/"
FIRMWARE = "firmware/"
BUNDLE_FILE = "bundle.json"
LINES = "lines/"
STATIONS_DIR = "/stations/"
MACS = "macs/"
DAC_POOL = "dac-pool"
DEVICE_KEYS = "device-keys/"
FLEET = "fleet/"
FLEET_DEVICES = f"{FLEET}devices/"
IMAGE_RE = re.compile(r"image-(\d{4})-([0-9a-f]*)\.json$")
CERTIFY_RE = re.compile(r"certify-(\d{4})\.json$")
REISSUE_RE = re.compile(r"reissue-(\d{4})\.json$")
SCRAPPED = "scrapped.json"


def index_str(index: int) -> str:
    """A device index as written everywhere: 7 digits, zero-padded (`0000042`)."""
    return f"{index:07d}"


# --- an order's objects ----------------------------------------------------------------------


def order_prefix(order_id: str) -> str:
    """Prefix of every object of an order: `orders/<order_id>/`."""
    return f"{ORDERS}{order_id}/"


def order_key(order_id: str, name: str) -> str:
    """Object key of an order-level object `name` (one of the names above)."""
    return f"{order_prefix(order_id)}{name}"


def order_json(order_id: str) -> str:
    """The accepted work order, as submitted (allocator, write-once)."""
    return order_key(order_id, ORDER_JSON)


def claim_json(order_id: str) -> str:
    """The order's counter ranges, lot size and line key (allocator, write-once)."""
    return order_key(order_id, CLAIM_JSON)


def emitted_json(order_id: str) -> str:
    """Where `mfg.devices.allocated` ended once the order was sent (allocator, a hint)."""
    return order_key(order_id, EMITTED_JSON)


def manifest_json(order_id: str) -> str:
    """The order's manifest, written last: its completion mark (assembler)."""
    return order_key(order_id, MANIFEST_JSON)


def manifest_csv(order_id: str) -> str:
    """One row per device (assembler)."""
    return order_key(order_id, MANIFEST_CSV)


def qrcodes_zip(order_id: str) -> str:
    """Every device's QR PNG (assembler)."""
    return order_key(order_id, QRCODES_ZIP)


def bindings_csv(order_id: str) -> str:
    """The stations' outcomes (assembler, rewritten while the order is flashed)."""
    return order_key(order_id, BINDINGS_CSV)


def bindings_failed_csv(order_id: str) -> str:
    """Devices that failed for good (assembler)."""
    return order_key(order_id, BINDINGS_FAILED_CSV)


def bindings_scrapped_csv(order_id: str) -> str:
    """Devices scrapped after the line (`device scrap`)."""
    return order_key(order_id, BINDINGS_SCRAPPED_CSV)


def allocation_prefix(order_id: str) -> str:
    """Prefix of the order's allocation chunks."""
    return order_key(order_id, "allocation/")


def allocation_chunk(order_id: str, chunk: int) -> str:
    """The identities of devices chunk*1000.. (allocator, write-once)."""
    return f"{allocation_prefix(order_id)}{chunk:05d}.json"


def ready_prefix(order_id: str) -> str:
    """Prefix of the order's ready chunks (listing it counts the order's progress)."""
    return order_key(order_id, "ready/")


def ready_chunk(order_id: str, name: str) -> str:
    """One ready chunk of the assembler (`name`: a fresh uuid4 hex per flush)."""
    return f"{ready_prefix(order_id)}{name}.json"


def lot_key(order_id: str, first: int, name: str) -> str:
    """Object key of a lot object: `orders/<order_id>/lots/<first index>/<name>`."""
    return order_key(order_id, f"lots/{index_str(first)}/{name}")


def lots_prefix(order_id: str) -> str:
    """Prefix of every lot object of an order (`orders/<id>/lots/`)."""
    return order_key(order_id, "lots/")


def labels_lot_key(order_id: str, first: int) -> str:
    """The builder's `labels.lot` of the lot starting at `first`: its onboarding.json pieces
    are the lot's generation-0 image records (the fleet index reads them; no fleet write)."""
    return lot_key(order_id, first, LABELS)


def device_key(order_id: str, index: int, name: str) -> str:
    """Object key of a per-device file: `orders/<order_id>/devices/<index>/<name>`."""
    return order_key(order_id, f"devices/{index_str(index)}/{name}")


def generation_key(order_id: str, index: int, generation: int, name: str) -> str:
    """Object key of generation n's file `name` (generation 0 is the pipeline's own key)."""
    if generation == 0:
        return device_key(order_id, index, name)
    return device_key(order_id, index, f"gen-{generation:04d}/{name}")


def station_records_prefix(order_id: str) -> str:
    """Prefix under which every final station outcome of an order is stored."""
    return order_key(order_id, "station/")


def station_record_key(order_id: str, index: int) -> str:
    """A device's final station outcome (a StationResult, written once)."""
    return f"{station_records_prefix(order_id)}{index_str(index)}.json"


def station_record_index(order_id: str, key: str) -> int | None:
    """The device index of a station record's key, None for any other key."""
    prefix = station_records_prefix(order_id)
    name = key[len(prefix) :] if key.startswith(prefix) else ""
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def device_dacs_prefix(order_id: str, index: int | None = None) -> str:
    """Prefix of an order's (or one device's) device-key DAC records."""
    base = order_key(order_id, "device-dacs/")
    return base if index is None else f"{base}{index_str(index)}/"


def device_dac_key(order_id: str, index: int, generation: int) -> str:
    """A device-key device's DAC record of one generation."""
    return f"{device_dacs_prefix(order_id, index)}{generation:04d}.json"


def imported_dac_choice_key(order_id: str, index: int) -> str:
    """Which imported DAC device `index` of an order took."""
    return order_key(order_id, f"imported-dacs/{index_str(index)}.json")


# --- the claim chain (identity registry) ----------------------------------------------------


def chain_prefix(vendor_id: int, product_id: int) -> str:
    """Where a product's claim records live."""
    return f"{STATE_PRODUCTS}{vendor_id:04X}-{product_id:04X}{CLAIMS_DIR}"


def chain_record_key(prefix: str, seq: int) -> str:
    """Claim record number `seq` of the chain under `prefix` (chain_prefix)."""
    return f"{prefix}{seq:010d}.json"


def chain_record_seq(key: str) -> int:
    """The sequence number of a claim record's key."""
    return int(key.rsplit("/", 1)[1].split(".")[0])


def chain_products(listed: list[str]) -> set[tuple[int, int]]:
    """(VID, PID) of every product with a claim record among keys listed under STATE_PRODUCTS."""
    out = set()
    for key in listed:
        if key.startswith(STATE_PRODUCTS) and CLAIMS_DIR in key:
            vid, pid = key.split("/")[2].split("-")
            out.add((int(vid, 16), int(pid, 16)))
    return out


def key_claim_key(vendor_id: int, product_id: int, public_key_sha256: str) -> str:
    """The claim on one device-born public key within a product (VID, PID)."""
    return f"{DEVICE_KEYS}{vendor_id:04X}/{product_id:04X}/{public_key_sha256}.json"


# --- catalogues: profiles, firmware, lines ----------------------------------------------------


def profile_key(name: str) -> str:
    """An attestation profile's public summary."""
    return f"{PROFILES}{name}.json"


def bundle_key(name: str, file: str = BUNDLE_FILE) -> str:
    """A firmware bundle's `bundle.json`, or one of its files."""
    return f"{FIRMWARE}{name}/{file}"


def bundle_names(listed: list[str]) -> list[str]:
    """The bundle names among keys listed under FIRMWARE."""
    return sorted(
        k[len(FIRMWARE) : -len(BUNDLE_FILE) - 1] for k in listed if k.endswith("/" + BUNDLE_FILE)
    )


def line_keys_prefix(line: str) -> str:
    """Prefix of a line's key versions."""
    return f"{LINES}{line}/keys/"


def line_key_object(line: str, version: int) -> str:
    """A line key version: `lines/<line>/keys/<version, 6 digits>.json`."""
    return f"{line_keys_prefix(line)}{version:06d}.json"


def line_names(listed: list[str]) -> list[str]:
    """The lines with a key among keys listed under LINES."""
    found = {
        k[len(LINES) :].split("/", 1)[0]
        for k in listed
        if k.startswith(LINES) and k[len(LINES) :].split("/")[1:2] == ["keys"]
    }
    return sorted(found)


def presence_prefix(line: str | None = None) -> str:
    """Prefix of a line's station presences (None: every line's)."""
    return f"{LINES}{line}{STATIONS_DIR}" if line else LINES


def presence_key(line: str, station_id: str) -> str:
    """A station's presence (overwritten every beat)."""
    return f"{presence_prefix(line)}{station_id}.json"


def is_presence_key(key: str) -> bool:
    """Whether a key listed under LINES is a station's presence."""
    return STATIONS_DIR in key and key.endswith(".json")


# --- imported DACs ------------------------------------------------------------------------------


def dac_pool_root(profile: str) -> str:
    """Prefix of a profile's imported DACs."""
    return f"{DAC_POOL}/{profile}"


def dac_pool_prefix(profile: str, kind: str) -> str:
    """Prefix of a profile's imported-DAC objects of one kind (batches, dacs, claims)."""
    return f"{dac_pool_root(profile)}/{kind}/"


def dac_pool_batch_key(profile: str, batch: str) -> str:
    """Where an import batch's record is stored."""
    return f"{dac_pool_root(profile)}/batches/{batch}.json"


def dac_pool_dac_key(profile: str, fp: str) -> str:
    """Where one imported DAC is stored."""
    return f"{dac_pool_root(profile)}/dacs/{fp}.json"


def dac_pool_claim_key(profile: str, fp: str) -> str:
    """The claim object that gives one imported DAC to one device."""
    return f"{dac_pool_root(profile)}/claims/{fp}.json"


# --- after the line: MACs and fleet records ----------------------------------------------------


def mac_key(mac: str) -> str:
    """The assembler's claim of a MAC (aa:bb:cc:dd:ee:ff or 12 hex digits)."""
    return f"{MACS}{mac.lower().replace(':', '').replace('-', '')}.json"


def serial_prefix(serial_num: str) -> str:
    """Prefix of a serial's pointers (one per product that has it: serials are per product)."""
    return f"{FLEET}by-serial/{quote(serial_num, safe='')}/"


def serial_key(vendor_id: int, product_id: int, serial_num: str) -> str:
    """Pointer of a product's serial number."""
    return f"{serial_prefix(serial_num)}{vendor_id:04X}{product_id:04X}.json"


def dac_key(dac_serial: str) -> str:
    """Pointer of a DAC serial (lowercase hex, as the ledger writes it)."""
    return f"{FLEET}by-dac/{dac_serial.lower()}.json"


def qr_key(vendor_id: int, product_id: int, discriminator: int, passcode: int) -> str:
    """Pointer of an onboarding payload's identity (a digest: no passcode in key names)."""
    text = f"{vendor_id}:{product_id}:{discriminator}:{passcode}"
    return f"{FLEET}by-qr/{hashlib.sha256(text.encode()).hexdigest()}.json"


def fleet_order_prefix(order_id: str) -> str:
    """Prefix of every device record of an order."""
    return f"{FLEET_DEVICES}{order_id}/"


def fleet_device_prefix(order_id: str, index: int) -> str:
    """Prefix of one device's records."""
    return f"{fleet_order_prefix(order_id)}{index_str(index)}/"


def image_key(order_id: str, index: int, generation: int, dac_serial: str) -> str:
    """A device's image record of one generation (0: built by the pipeline)."""
    return f"{fleet_device_prefix(order_id, index)}image-{generation:04d}-{dac_serial}.json"


def scrap_key(order_id: str, index: int) -> str:
    """A device's scrap record."""
    return fleet_device_prefix(order_id, index) + SCRAPPED


def certify_key(order_id: str, index: int, generation: int) -> str:
    """The grant that lets a device-key device be certified again, as generation `generation`."""
    return f"{fleet_device_prefix(order_id, index)}certify-{generation:04d}.json"


def reissue_key(order_id: str, index: int, generation: int) -> str:
    """The claim of generation `generation` of a device (reissue)."""
    return f"{fleet_device_prefix(order_id, index)}reissue-{generation:04d}.json"


def revocations_prefix(profile: str) -> str:
    """Prefix of every revocation of a profile's PAI."""
    return f"{FLEET}revocations/{profile}/"


def revocation_key(profile: str, dac_serial: str) -> str:
    """The one revocation record a DAC can have."""
    return f"{revocations_prefix(profile)}{dac_serial.lower()}.json"


def crl_prefix(profile: str) -> str:
    """Prefix of a profile's CRL number chain."""
    return f"{FLEET}crl/{profile}/"


def crl_key(profile: str, number: int, ext: str = "json") -> str:
    """A CRL number's record (`json`) or the CRL itself (`der`)."""
    return f"{crl_prefix(profile)}{number:010d}.{ext}"
