"""The allocator's objects of an order in the bucket, read and written in one place.

Per order (`orders/<order_id>/`, DESIGN §5): `order.json` (the accepted order, write-once),
`claim.json` (its counter ranges, lot size and line key, write-once), `allocation/<chunk>.json`
(its devices' identities, CHUNK a chunk, write-once), `emitted.json` (where the log ended once
its devices were sent: a mutable hint for the re-drive), and what the allocator reads of the
assembler's: the `ready/` chunks (which devices are ready) and `manifest.json` (the order is
finished). Per product: the claim chain (`claim_chain.py`), which decides identities.

Keys and models are the typed bucket's (`matterfab.bucket`): this book decides what the
allocator does with them, never how they are named or parsed. The re-driver and the stall
watch see this book and a send, never the Allocator.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab import lots
from matterfab.bucket import keys, objects
from matterfab.bucket.models import AllocationChunk, Emitted
from matterfab.config import settings_problem
from matterfab.errors import IntegrityError, StackError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LineCatalogue
from matterfab.matter import nvs
from matterfab.messages import ManifestRef, WorkOrder
from matterfab.s3 import ObjectStore
from matterfab.services.allocator import allocation
from matterfab.services.allocator.claim_chain import ClaimChains, ReadOrder

log = logging.getLogger(__name__)


class LotSettings(BaseSettings):
    """How big the lots of a new order are (env `MATTERFAB_LOT_MAX_DEVICES`, `…_SECONDS`).

    Read when an order is accepted and stored in its `claim.json`: changing them later never
    re-cuts an accepted order, so a re-driven order's lots are the devices they always were.
    """

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_LOT_", extra="ignore", env_ignore_empty=True
    )

    max_devices: int = Field(lots.MAX_DEVICES, ge=1, le=lots.MAX_DEVICES)
    seconds: float = Field(lots.TARGET_S, gt=0, description="Build work per lot, in seconds")

    def lot_size(self, order: WorkOrder) -> int:
        """Devices per lot for a new order (its size, iteration count and these settings)."""
        return lots.lot_size(
            order.commissioning.iteration_count, self.seconds, self.max_devices, order.quantity
        )


def load_lot_settings() -> LotSettings:
    """The lot settings from the environment; one line naming a bad variable otherwise."""
    try:
        return LotSettings()
    except ValidationError as exc:
        raise StackError(settings_problem(exc, "MATTERFAB_LOT_")) from None


class OrderBook:
    """An allocator's view of its orders' objects in one bucket.

    `wrapper` wraps the XTS keys of encrypted orders' devices when a chunk is allocated;
    `lot_settings` fix a new order's lot size in its `claim.json` (from the environment if
    not given).
    """

    def __init__(
        self, store: ObjectStore, wrapper: KeyWrapper, lot_settings: LotSettings | None = None
    ):
        self.store = store
        self.wrapper = wrapper
        self.lots = lot_settings if lot_settings is not None else load_lot_settings()
        self.lines = LineCatalogue(store)
        self.claims = ClaimChains(store, order_reader(store))  # the per-product claim chains
        self._finished: set[str] = set()  # orders seen with a manifest.json

    # order.json

    async def order_body(self, order_id: str) -> bytes | None:
        """The stored `order.json` as written, or None."""
        return await objects.order_bytes(self.store, order_id)

    async def put_order(self, order_id: str, body: bytes) -> bool:
        """Store `order.json` once; False when a different one is there already."""
        try:
            await objects.put_order(self.store, order_id, body)
        except IntegrityError:
            return False
        return True

    async def order(self, order_id: str) -> WorkOrder:
        """The accepted order (KeyError when it has no `order.json`)."""
        return await objects.get_order(self.store, order_id)

    async def quantity(self, order_id: str) -> int | None:
        """The accepted order's device count, or None when it has no `order.json`."""
        order = await objects.read_order_fields(self.store, order_id)
        return None if order is None else order.quantity

    # manifest.json (the assembler's)

    async def manifest_ref(self, order_id: str) -> ManifestRef | None:
        """A reference to the order's manifest, if it was made."""
        raw = await objects.manifest_bytes(self.store, order_id)
        if raw is None:
            return None
        return ManifestRef(key=keys.manifest_json(order_id), sha256=hashlib.sha256(raw).hexdigest())

    async def finished(self, order_id: str) -> bool:
        """Whether the order's `manifest.json` exists (once seen, remembered)."""
        if order_id in self._finished:
            return True
        if await objects.is_completed(self.store, order_id):
            self._finished.add(order_id)
            return True
        return False

    async def unfinished(self) -> list[str]:
        """Orders with a claim record and order.json but no manifest.json, in claim order."""
        out: list[str] = []
        for vendor_id, product_id in await self.claims.products():
            chain = await self.claims.chain(vendor_id, product_id)
            for order_id in chain.by_order:
                if await self.finished(order_id):
                    continue
                if await objects.has_order(self.store, order_id):
                    out.append(order_id)
        return out

    # claim.json

    async def claim(self, order_id: str) -> allocation.Claim | None:
        """The order's `claim.json`, if it was written."""
        return await objects.read_claim(self.store, order_id)

    async def claim_record(self, order: WorkOrder) -> dict[str, Any]:
        """The order's record in its product's claim chain (KeyError if it has none)."""
        p = order.product
        return (await self.claims.chain(p.vendor_id, p.product_id)).by_order[order.order_id]

    async def settle_claim(self, order: WorkOrder, record: dict[str, Any]) -> allocation.Claim:
        """The order's own copy of its claim record's counter ranges, and its lot size.

        As stored, else written now (the lot size from the lot settings, the line's current key).
        """
        existing = await objects.read_claim(self.store, order.order_id)
        if existing is not None:
            return existing
        claim = allocation.Claim(
            order.order_id,
            record["serial_start"],
            record["serial_count"],
            record["discriminator_start"],
            self.lots.lot_size(order),
            await self._line_key(order),
        )
        try:
            await objects.put_claim(self.store, claim)
        except IntegrityError:
            # Another instance allocated this order at the same time; its claim stands.
            stored = await objects.read_claim(self.store, order.order_id)
            assert stored is not None  # write-once: it is there
            return stored
        return claim

    async def _line_key(self, order: WorkOrder) -> str:
        """The fingerprint of the order's line's current key (checked at acceptance)."""
        current = await self.lines.current(order.line)
        if current is None:  # unregistered since it was checked: refuse, naming the field
            raise invalid("line", f"unknown production line {order.line!r}")
        return current.fingerprint

    # allocation/<chunk>.json

    async def chunk(self, order_id: str, chunk: int) -> list[dict[str, Any]] | None:
        """A stored allocation chunk's devices, or None if it was not written."""
        stored = await objects.read_allocation(self.store, order_id, chunk)
        return None if stored is None else stored.to_docs()

    async def allocate(
        self, order: WorkOrder, claim: allocation.Claim, chunk: int
    ) -> list[dict[str, Any]]:
        """A chunk's devices: as stored, else allocated now and stored write-once."""
        existing = await self.chunk(order.order_id, chunk)
        if existing is not None:
            return existing

        def wrap_nvs_keys(dev_id: str) -> str:
            return self.wrapper.wrap(nvs.generate_xts_keys(), f"nvs-keys:{dev_id}")

        devices = allocation.allocate_chunk(order, claim, chunk, wrap_nvs_keys)
        try:
            await objects.put_allocation(
                self.store, order.order_id, chunk, AllocationChunk.of(devices)
            )
        except IntegrityError:
            stored = await self.chunk(order.order_id, chunk)
            assert stored is not None  # write-once: it is there
            return stored
        return devices

    # ready/ (the assembler's progress)

    async def ready_chunks(
        self, order_id: str, seen: Collection[str]
    ) -> list[tuple[str, list[int]]]:
        """The assembler's ready chunks not in `seen`: (chunk name, device indices in it)."""
        out = []
        for key in await objects.ready_chunk_keys(self.store, order_id):
            if key in seen:
                continue
            chunk = await objects.read_ready_chunk(self.store, key)
            if chunk is None:
                continue
            out.append((key, sorted(chunk.indices())))
        return out

    # emitted.json (a hint)

    async def emitted(self, order_id: str) -> dict[int, int] | None:
        """Where each partition's log ended once the order's devices were sent, if recorded."""
        emitted = await objects.read_emitted(self.store, order_id)
        return None if emitted is None else emitted.ends

    async def put_emitted(self, order_id: str, topic: str, ends: dict[int, int]) -> None:
        """Record where `topic`'s partitions ended once the order's devices were sent."""
        await objects.put_emitted(self.store, order_id, Emitted(topic=topic, ends=ends))


def order_reader(store: ObjectStore) -> ReadOrder:
    """Reads an order's stored `order.json` (None if absent), for `ClaimChains` without a book."""

    async def read(order_id: str) -> WorkOrder | None:
        return await objects.read_order(store, order_id)

    return read
