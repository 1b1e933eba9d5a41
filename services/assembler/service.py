"""The assembler: follows each order's images and writes its manifest when all are ready.

Several assemblers may share the work: images are keyed by device, so one instance sees only
part of an order. The bucket is the truth: an instance counts an order's `onboarding.json`
objects (throttled), reports progress from that count, and when it reaches the quantity
writes the manifest. The manifest bytes are deterministic, so two instances finishing the
same order write identical objects, which write-once storage accepts.

Station results (`mfg.station-results`) are aggregated into `bindings.csv` by
`stations.StationResults`; see that module for its state and restart story.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from matterfab.errors import IntegrityError
from matterfab.messages import ORDER_EVENTS, ImageReady, ManifestRef, OrderEvent
from matterfab.messages.base import order_key
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore
from matterfab.services.assembler import manifest

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0  # seconds between bucket counts of one unfinished order
FETCH_CONCURRENCY = 32


def record_of(msg: ImageReady) -> dict[str, Any]:
    """A device's onboarding record (as in its onboarding.json) from its ImageReady."""
    objects = msg.objects.model_dump(exclude_none=True)
    onboarding = objects.pop("onboarding")
    return {
        "device_id": msg.device_id,
        "index": msg.index,
        "quantity": msg.quantity,
        "vendor_id": msg.vendor_id,
        "product_id": msg.product_id,
        "serial_num": msg.serial_num,
        "discriminator": msg.discriminator,
        "qr_payload": msg.qr_payload,
        "manual_code": msg.manual_code,
        "rd_id_uid": msg.rd_id_uid,
        "dac_serial": msg.dac_serial,
        "objects": objects,
        "onboarding": onboarding,
    }


@dataclass
class OrderState:
    """What this instance knows of one unfinished order."""

    quantity: int
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    ready: int = 0  # from the last bucket count
    reported: int = -1  # `ready` of the last progress event sent
    checked_at: float = 0.0
    dirty: bool = False


class Assembler:
    """Aggregates images per order; writes manifests."""

    def __init__(self, store: ObjectStore):
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
        """Record one ready image; maybe report progress or complete the order."""
        if msg.order_id in self.done or msg.requeues:
            # A re-queued image (a station failed to flash it) carries nothing new.
            return []
        st = self.orders.setdefault(msg.order_id, OrderState(msg.quantity))
        st.records[msg.index] = record_of(msg)
        st.dirty = True
        local_full = len(st.records) >= st.quantity
        if local_full or time.monotonic() - st.checked_at >= CHECK_INTERVAL:
            return await self._check(msg.order_id, st)
        return []

    async def on_idle(self) -> list[Emit]:
        """When no images arrive: recount the orders that changed since their last count."""
        emits: list[Emit] = []
        for order_id, st in list(self.orders.items()):
            if st.dirty and time.monotonic() - st.checked_at >= CHECK_INTERVAL:
                emits += await self._check(order_id, st)
        return emits

    async def _ready_indices(self, order_id: str) -> set[int]:
        keys = await self.store.list_keys(order_key(order_id, "devices/"))
        return {int(k.split("/")[-2]) for k in keys if k.endswith("/onboarding.json")}

    async def _check(self, order_id: str, st: OrderState) -> list[Emit]:
        st.checked_at = time.monotonic()
        st.dirty = False
        indices = await self._ready_indices(order_id) | set(st.records)
        st.ready = len(indices)
        if st.ready >= st.quantity:
            return await self._complete(order_id, st, indices)
        if st.ready != st.reported:
            st.reported = st.ready
            return [self._event(order_id, "progress", ready=st.ready, quantity=st.quantity)]
        return []

    async def _complete(self, order_id: str, st: OrderState, indices: set[int]) -> list[Emit]:
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
        json_key = order_key(order_id, "manifest.json")
        existing = await self.store.get_or_none(json_key)
        if existing is not None:
            return ManifestRef(key=json_key, sha256=hashlib.sha256(existing).hexdigest())
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch_record(index: int) -> dict[str, Any]:
            async with sem:
                key = order_key(order_id, f"devices/{index:07d}/onboarding.json")
                raw = await self.store.get(key)
                rec = json.loads(raw)
                rec["onboarding"] = {
                    "key": key,
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "size": len(raw),
                }
                return rec

        missing = [i for i in range(st.quantity) if i not in st.records]
        for rec in await asyncio.gather(*(fetch_record(i) for i in missing)):
            st.records[rec["index"]] = rec
        records = [st.records[i] for i in range(st.quantity)]

        async def fetch_png(rec: dict[str, Any]) -> tuple[str, bytes]:
            async with sem:
                ref = rec["objects"]["qrcode"]
                png = await self.store.get(ref["key"])
                if hashlib.sha256(png).hexdigest() != ref["sha256"]:
                    raise IntegrityError(f"{ref['key']}: sha256 differs from the builder's record")
                return rec["serial_num"], png

        pngs = await asyncio.gather(*(fetch_png(r) for r in records))
        order = json.loads(await self.store.get(order_key(order_id, "order.json")))
        zip_obj = await self.store.put_once(
            order_key(order_id, "qrcodes.zip"), manifest.qrcodes_zip(pngs), "application/zip"
        )
        csv_obj = await self.store.put_once(
            order_key(order_id, "manifest.csv"), manifest.manifest_csv(records), "text/csv"
        )
        objects = {
            "manifest.csv": {"key": csv_obj.key, "sha256": csv_obj.sha256, "size": csv_obj.size},
            "qrcodes.zip": {"key": zip_obj.key, "sha256": zip_obj.sha256, "size": zip_obj.size},
        }
        body = manifest.manifest_json(order, records, objects)
        obj = await self.store.put_once(json_key, body, "application/json")
        return ManifestRef(key=obj.key, sha256=obj.sha256)

    @staticmethod
    def _event(order_id: str, status: str, **kw: Any) -> Emit:
        return Emit(ORDER_EVENTS, order_id, OrderEvent(order_id=order_id, status=status, **kw))
