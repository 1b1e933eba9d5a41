"""The assembler: follows each order's images and writes its manifest when all are ready.

Several assemblers may share the work: images are keyed by device, so one instance sees only
part of an order. An instance gathers the images it receives in memory and stores them, per
order, as one write-once *chunk* `orders/<id>/ready/<uuid>.json` (the devices' onboarding
records and QR PNGs) when the runtime flushes: at most every `LINGER_S` while images flow,
and always before their offsets are committed. A crash before a flush loses nothing (the
images come again); a device stored in two chunks counts once.

The bucket is the truth: an order's progress is the number of distinct devices in its chunks,
found by listing `ready/` (one object per flush, not one per device) and reading each chunk
once. The instance that finds the order complete writes the manifest from the chunks. Its
bytes are deterministic, so two instances finishing the same order write identical objects,
which write-once storage accepts.

A device's refs go into the manifest exactly as the builder made them: a whole object (key,
sha256, size) or a piece of a lot object (plus `offset`, DESIGN §5 "Lots"). Its QR PNG travels
inline in its ImageReady and chunk entry, so qrcodes.zip costs no read per device; only an entry
without one reads its PNG from the bucket, through a RefReader (one GET per lot object).

The device index costs the build path nothing (issue #26): a device's generation-0 image record
is its onboarding.json in the builder's labels.lot (fleet/index.py), and its pointers are
written when a station records it flashed (stations.py) or by `device reindex`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from matterfab import firmware
from matterfab.bucket import keys as bucket_keys
from matterfab.bucket import objects
from matterfab.errors import IntegrityError
from matterfab.messages import ORDER_EVENTS, ImageReady, ManifestRef, OrderEvent
from matterfab.messages.onboarding import OnboardingRecord
from matterfab.objectstore import Store
from matterfab.refs import RefReader
from matterfab.runtime import Emit
from matterfab.services.assembler import manifest

log = logging.getLogger(__name__)

LINGER_S = 1.0  # the longest images wait in memory (uncommitted) before they are stored
CHECK_INTERVAL = 2.0  # seconds between counts of one unfinished order's chunks...
CHUNKS_PER_SECOND = 200  # ...longer for big orders: at most this many chunks listed per second
FETCH_CONCURRENCY = 16


_RECORD_FIELDS = set(OnboardingRecord.model_fields) - {"objects"}


def record_of(msg: ImageReady) -> dict[str, Any]:
    """A device's entry in a chunk: its onboarding.json and that object's ref.

    `msg.record().to_doc()` (what json.loads(onboarding.json) gives) dumped straight from the
    message: an ImageReady is its OnboardingRecord's fields plus its own, so building the
    record first only validated the same values again (tests compare both).
    """
    entry = msg.model_dump(mode="json", include=_RECORD_FIELDS)
    objects = msg.objects.model_dump(mode="json", exclude_none=True)
    # As onboarding.json writes its refs: `offset` only for a piece of a lot object.
    entry["onboarding"] = objects.pop("onboarding")
    entry["objects"] = objects
    if msg.qrcode_png_b64:  # sent by builders before lots; now the PNG is in labels.lot
        entry["qrcode_png_b64"] = msg.qrcode_png_b64
    return entry


@dataclass
class OrderState:
    """What this instance knows of one unfinished order."""

    quantity: int
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)  # not stored yet
    chunks: dict[str, int] = field(default_factory=dict)  # chunks known -> their first index
    indices: set[int] = field(default_factory=set)  # devices in those chunks
    ready: int = 0  # distinct devices at the last count
    reported: int = -1  # `ready` of the last progress event sent
    checked_at: float = float("-inf")
    dirty: bool = False  # a chunk was stored since the last count

    def check_due(self, now: float) -> bool:
        """Whether the order's chunks should be counted again."""
        interval = max(CHECK_INTERVAL, len(self.chunks) / CHUNKS_PER_SECOND)
        return self.dirty and now - self.checked_at >= interval


class Assembler:
    """Aggregates images per order; writes manifests."""

    def __init__(self, store: Store):
        self.store = store
        self.orders: dict[str, OrderState] = {}
        self.done: dict[str, int] = {}  # completed order -> quantity

    def ready_of(self, order_id: str) -> int:
        """Devices of the order whose image this instance knows is ready (0: unknown)."""
        if order_id in self.done:
            return self.done[order_id]
        st = self.orders.get(order_id)
        return st.ready if st else 0

    async def handle(self, msg: ImageReady) -> list[Emit]:
        """Hold one ready image until the next flush stores it."""
        if msg.order_id in self.done or msg.requeues:
            # A re-queued image (a station failed to flash it) carries nothing new.
            return []
        st = self.orders.setdefault(msg.order_id, OrderState(msg.quantity))
        st.pending[msg.index] = record_of(msg)
        return []

    def completes_an_order(self) -> bool:
        """Whether the images held complete an order this instance has seen all of (so the
        next flush should not wait for the linger: the order's manifest is due)."""
        return any(
            st.pending
            and len(st.indices) + sum(1 for i in st.pending if i not in st.indices) >= st.quantity
            for st in self.orders.values()
        )

    async def flush(self) -> list[Emit]:
        """Store every order's pending images as a chunk; count the orders that may be done.

        An order is counted at once when the devices this instance knows of reach its
        quantity (the common case of the last chunk), else at most every check interval.
        """
        emits: list[Emit] = []
        now = time.monotonic()
        for order_id, st in list(self.orders.items()):
            if st.pending:
                await self._store_chunk(order_id, st)
            maybe_complete = st.dirty and len(st.indices) >= st.quantity
            if maybe_complete or st.check_due(now):
                emits += await self._check(order_id, st)
        return emits

    async def on_idle(self) -> list[Emit]:
        """When no images arrive: count the orders that changed since their last count."""
        emits: list[Emit] = []
        now = time.monotonic()
        for order_id, st in list(self.orders.items()):
            if st.check_due(now):
                emits += await self._check(order_id, st)
        return emits

    async def _store_chunk(self, order_id: str, st: OrderState) -> None:
        records = [st.pending[i] for i in sorted(st.pending)]
        obj = await objects.put_ready_chunk(self.store, uuid.uuid4().hex, order_id, records)
        st.chunks[obj.key] = min(st.pending)
        st.indices.update(st.pending)
        st.pending.clear()
        st.dirty = True

    async def _chunk_indices(self, keys: list[str]) -> list[frozenset[int]]:
        """The device indices in each chunk (fetched a few at a time, kept as indices only)."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def indices(key: str) -> frozenset[int]:
            async with sem:
                chunk = await objects.read_ready_chunk(self.store, key)
            return frozenset() if chunk is None else chunk.indices()

        return list(await asyncio.gather(*(indices(k) for k in keys)))

    async def _check(self, order_id: str, st: OrderState) -> list[Emit]:
        st.checked_at = time.monotonic()
        st.dirty = False
        keys = await objects.ready_chunk_keys(self.store, order_id)
        unseen = [k for k in keys if k not in st.chunks]
        for key, indices in zip(unseen, await self._chunk_indices(unseen), strict=True):
            st.chunks[key] = min(indices, default=0)
            st.indices.update(indices)
        st.ready = len(st.indices)
        if st.ready >= st.quantity:
            return await self._complete(order_id, st)
        if st.ready != st.reported:
            st.reported = st.ready
            return [self._event(order_id, "progress", ready=st.ready, quantity=st.quantity)]
        return []

    async def _complete(self, order_id: str, st: OrderState) -> list[Emit]:
        ref = await self.write_manifest(order_id, st)
        self.orders.pop(order_id, None)
        self.done[order_id] = st.quantity
        log.info("order completed", extra={"order_id": order_id, "mf_quantity": st.quantity})
        return [
            self._event(order_id, "progress", ready=st.quantity, quantity=st.quantity),
            self._event(
                order_id, "completed", ready=st.quantity, quantity=st.quantity, manifest=ref
            ),
        ]

    async def write_manifest(self, order_id: str, st: OrderState) -> ManifestRef:
        """Write qrcodes.zip, manifest.csv and, last, manifest.json (the completion mark)."""
        existing = await objects.manifest_bytes(self.store, order_id)
        if existing is not None:
            key = bucket_keys.manifest_json(order_id)
            return ManifestRef(key=key, sha256=hashlib.sha256(existing).hexdigest())
        order = await objects.order_doc(self.store, order_id)
        if order is None:
            raise IntegrityError(f"order {order_id}: ready devices but no order.json")
        fw = await firmware.order_firmware(self.store, order)
        built = manifest.ManifestBuilder(order, None if fw is None else fw.as_json())
        # PNGs to read from labels.lot: (lot key, offset, serial, (offset, sha256, size))
        labels: list[tuple[str, int, str, tuple[int | None, str, int]]] = []
        # One chunk at a time, by their first device: the builder writes each device as soon
        # as those before it are written, so it holds little more than the documents.
        for key in sorted(st.chunks, key=lambda k: (st.chunks[k], k)):
            chunk = await objects.read_ready_chunk(self.store, key)
            for rec in [] if chunk is None else (r.to_doc() for r in chunk.records):
                if rec["index"] not in built:
                    inline = self._inline_png(rec)
                    built.add(rec, inline or b"")
                    if inline is None:
                        ref = rec["objects"]["qrcode"]
                        piece = (ref.get("offset"), ref["sha256"], ref["size"])
                        labels.append((ref["key"], piece[0] or 0, rec["serial_num"], piece))
        missing = [i for i in range(st.quantity) if i not in built]
        if missing:
            raise IntegrityError(f"order {order_id}: devices {missing[:5]} in no chunk")
        # Read by lot object and offset, not in chunk order: each labels.lot is fetched once.
        # For this manifest only, one lot at a time (the reads are sorted by lot): lots it read
        # are not kept after, nor while the next is read.
        refs = RefReader(self.store, keep=1)
        labels.sort()
        for key, _, serial, (offset, sha256, size) in labels:
            ref = {"key": key, "offset": offset, "sha256": sha256, "size": size}
            built.pngs[serial] = await refs.read(ref)  # checks size and sha256 against the ref
        del labels
        zip_obj = await self.store.put_once(
            bucket_keys.qrcodes_zip(order_id), built.qrcodes_zip(), "application/zip"
        )
        built.pngs.clear()
        csv_obj = await self.store.put_once(
            bucket_keys.manifest_csv(order_id), built.csv(), "text/csv"
        )
        made = {
            bucket_keys.MANIFEST_CSV: {
                "key": csv_obj.key,
                "sha256": csv_obj.sha256,
                "size": csv_obj.size,
            },
            bucket_keys.QRCODES_ZIP: {
                "key": zip_obj.key,
                "sha256": zip_obj.sha256,
                "size": zip_obj.size,
            },
        }
        body = built.json(made)
        del built
        obj = await self.store.put_once(
            bucket_keys.manifest_json(order_id), body, "application/json"
        )
        return ManifestRef(key=obj.key, sha256=obj.sha256)

    @staticmethod
    def _inline_png(rec: dict[str, Any]) -> bytes | None:
        """A device's QR PNG as an ImageReady carried it (builders before lots), else None."""
        inline = rec.get("qrcode_png_b64")
        if not inline:
            return None
        ref = rec["objects"]["qrcode"]
        png = base64.b64decode(inline)
        if hashlib.sha256(png).hexdigest() != ref["sha256"]:
            raise IntegrityError(f"{ref['key']}: sha256 differs from the builder's record")
        return png

    @staticmethod
    def _event(order_id: str, status: str, **kw: Any) -> Emit:
        return Emit(ORDER_EVENTS, order_id, OrderEvent(order_id=order_id, status=status, **kw))
