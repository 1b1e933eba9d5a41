"""Lots: the unit of work in the middle of the pipeline, and the write-once objects they make.

A lot is a run of consecutive devices of one order (DESIGN §5 "Lots"). The allocator cuts each
allocation chunk into lots of `lot_size` devices, chosen once per order and stored with its
claim, so a re-driven order is cut the same way: a lot is always the same devices. The signer
issues a lot's DACs in one go and stores them as one object; the builder builds a lot in one
worker task and stores its labels (QR PNGs and onboarding records) as one object and what
stations flash (each device's sealed `partition.bin` and friends) as another, from which a
station reads its device's pieces with ranged GETs.

A lot object is its pieces back to back from offset 0, so a piece is a plain byte range (a DER
certificate, a PNG, a JSON document) that `order fetch` cuts out and a Range GET could read,
then an index, then a fixed footer that says where the index starts:

    piece 0 | piece 1 | ... | index (JSON, sorted keys) | "matterfab-lot/1 " + 10 digits + "\n"

The index lists every piece: `index` (device), `name` (its per-device file name), `offset`,
`size`, `sha256`, plus what the writer adds (the signer: each DAC's wrapped key and time of
issue). The bytes depend only on the pieces, so a redelivered lot rebuilds identical bytes and
the write-once PUT is a no-op.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from matterfab.bucket import keys
from matterfab.errors import IntegrityError

MAX_DEVICES = 256  # a lot is at most this many devices...
TARGET_S = 1.0  # ...and about this much build work, whichever is smaller...
LOTS_PER_ORDER = 4  # ...and an order is at least this many lots (so every worker gets one)...
MIN_SPLIT = 32  # ...unless they would be smaller than this: an order of up to 32 is one lot
# Build work per device on one core, in ms, as a + b * iterations, with the native PBKDF2 and
# the native QR mask evaluation (bench `core` on this 2-core host: 3.1-3.7 ms at 10,000
# iterations, of which the verifier 1.1-2.0 ms, the QR PNG 0.5-0.75, the DAC ~0.5). The model
# from before the native PBKDF2 (1.5 + 0.001 * iterations: 11.5 ms) cut lots of 21 devices at
# 10,000 iterations: three times the per-lot records, objects and requests (issue #26). Every
# lot costs three records, three PUTs, a GET of dacs.lot and one of labels.lot, a worker task
# and a sealing encapsulation: lots of 64 (0.25 s of work) spent ~0.15 ms a device on that,
# lots of 256 (~0.9 s at 10,000 iterations) a quarter of it. The price: an order's first image
# comes ~0.7 s later, and an order smaller than a few lots would keep one worker busy while
# the other idles, hence LOTS_PER_ORDER (a 200-device order: four lots of 50).
COST_FIXED_MS = 1.6
COST_PER_ITERATION_MS = 0.0002

FOOTER_MAGIC = b"matterfab-lot/1 "
FOOTER_LEN = len(FOOTER_MAGIC) + 10 + 1  # magic, index length (10 digits), "\n"

# dacs.lot: each device's piece is its `dac.der`; its index entry holds the DAC's private key,
# AES-256-GCM wrapped and bound to the device id, and its time of issue (ISO 8601, UTC).
DAC_PIECE = "dac.der"
DAC_KEY_META = "dac-key-wrapped"
DAC_ISSUED_META = "issued-at"

# The lot objects' names and keys are the bucket's (matterfab/bucket/keys.py).
DACS = keys.DACS
LABELS = keys.LABELS
IMAGES = keys.IMAGES
lot_key = keys.lot_key


def lot_size(
    iteration_count: int,
    target_s: float = TARGET_S,
    max_devices: int = MAX_DEVICES,
    quantity: int | None = None,
) -> int:
    """Devices per lot for an order: about `target_s` of build work, 1..max_devices; for an
    order of `quantity` devices, small enough to make LOTS_PER_ORDER lots of MIN_SPLIT or more
    (None: as for an order of any size)."""
    per_device_ms = COST_FIXED_MS + COST_PER_ITERATION_MS * iteration_count
    size = max(1, min(max_devices, int(1000 * target_s / per_device_ms)))
    if quantity is not None:
        size = min(size, max(MIN_SPLIT, -(-quantity // LOTS_PER_ORDER)))
    return size


def lot_ranges(start: int, stop: int, size: int) -> Iterator[range]:
    """The lots of devices start..stop-1 (one allocation chunk): runs of `size`, last shorter."""
    for first in range(start, stop, size):
        yield range(first, min(stop, first + size))


@dataclass(frozen=True)
class Piece:
    """One device's file in a lot object (before packing)."""

    index: int
    name: str  # the per-device file it stands for: dac.der, qrcode.png, onboarding.json
    data: bytes
    meta: Mapping[str, str] = field(default_factory=dict)  # extra index fields (signer)


@dataclass(frozen=True)
class Entry:
    """Where one piece lies in a packed lot object."""

    index: int
    name: str
    offset: int
    size: int
    sha256: str
    meta: Mapping[str, str] = field(default_factory=dict)


def layout(pieces: Iterable[Piece]) -> list[Entry]:
    """The entries `pack` will write for these pieces, in order (offsets from 0)."""
    entries, offset = [], 0
    for p in pieces:
        digest = hashlib.sha256(p.data).hexdigest()
        entries.append(Entry(p.index, p.name, offset, len(p.data), digest, dict(p.meta)))
        offset += len(p.data)
    return entries


def pack(pieces: Iterable[Piece]) -> tuple[bytes, list[Entry]]:
    """A lot object's bytes, and where each piece lies in them."""
    pieces = list(pieces)
    entries = layout(pieces)
    index = json.dumps(
        {"entries": [_entry_json(e) for e in entries]}, sort_keys=True, separators=(",", ":")
    ).encode()
    footer = FOOTER_MAGIC + f"{len(index):010d}\n".encode()
    return b"".join([*(p.data for p in pieces), index, footer]), entries


def _entry_json(e: Entry) -> dict[str, Any]:
    reserved = {"index", "name", "offset", "size", "sha256"} & set(e.meta)
    if reserved:
        raise ValueError(f"lot piece meta may not set {sorted(reserved)}")
    return {
        **e.meta,
        "index": e.index,
        "name": e.name,
        "offset": e.offset,
        "size": e.size,
        "sha256": e.sha256,
    }


@dataclass(frozen=True)
class LotObject:
    """A parsed lot object: its bytes and its index."""

    body: bytes
    entries: tuple[Entry, ...]

    def named(self, name: str) -> dict[int, Entry]:
        """The entries of the pieces called `name` (e.g. DAC_PIECE), by device index."""
        return {e.index: e for e in self.entries if e.name == name}

    def piece(self, index: int, name: str) -> bytes:
        """The bytes of one device's piece (digest-checked)."""
        for e in self.entries:
            if e.index == index and e.name == name:
                return self.cut(e)
        raise KeyError(f"no {name} of device {index} in this lot")

    def cut(self, e: Entry) -> bytes:
        """The bytes of an entry, checked against its digest."""
        data = self.body[e.offset : e.offset + e.size]
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise IntegrityError(f"lot piece {e.name} of device {e.index}: sha256 differs")
        return data


def unpack(body: bytes, what: str = "lot object") -> LotObject:
    """Parse a lot object; IntegrityError names what is wrong with a damaged one."""
    if len(body) < FOOTER_LEN or not body[-FOOTER_LEN:].startswith(FOOTER_MAGIC):
        raise IntegrityError(f"{what}: not a lot object (no footer)")
    try:
        n = int(body[-FOOTER_LEN + len(FOOTER_MAGIC) : -1])
    except ValueError:
        raise IntegrityError(f"{what}: bad footer") from None
    start = len(body) - FOOTER_LEN - n
    if start < 0:
        raise IntegrityError(f"{what}: index length {n} exceeds the object")
    try:
        doc = json.loads(body[start : len(body) - FOOTER_LEN])
        entries = tuple(_entry_of(dict(d)) for d in doc["entries"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"{what}: unreadable index") from None
    for e in entries:
        if e.offset < 0 or e.size < 0 or e.offset + e.size > start:
            raise IntegrityError(f"{what}: piece {e.name} of device {e.index} out of bounds")
    return LotObject(body, entries)


def _entry_of(d: dict[str, Any]) -> Entry:
    """An index entry, strictly typed: whole numbers are JSON integers, names are strings."""
    numbers = [d.pop(k) for k in ("index", "offset", "size")]
    texts = [d.pop(k) for k in ("name", "sha256")]
    # bool is an int in Python, and 1e999 or 0.7 are floats: none of them is a position
    if any(type(n) is not int for n in numbers) or any(type(t) is not str for t in texts):
        raise TypeError("index entry field of the wrong type")
    index, offset, size = numbers
    name, sha256 = texts
    return Entry(index, name, offset, size, sha256, {k: str(v) for k, v in d.items()})
