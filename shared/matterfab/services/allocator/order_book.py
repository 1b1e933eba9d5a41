"""The allocator's objects of an order in the bucket, read and written in one place.

Per order (`orders/<order_id>/`, DESIGN §5): `order.json` (the accepted order, write-once),
`claim.json` (its counter ranges, lot size and line key, write-once), `allocation/<chunk>.json`
(its devices' identities, CHUNK a chunk, write-once), `emitted.json` (where the log ended once
its devices were sent: a mutable hint for the re-drive), and what the allocator reads of the
assembler's: the `ready/` chunks (which devices are ready) and `manifest.json` (the order is
finished). Per product: the claim chain (`claim_chain.py`), which decides identities.

Every key and every parse of these objects is in this module's private helpers (`_key`,
`_chunk_key`, `_ready_prefix`, `_json`), so the typed bucket can replace them in one spot.
The re-driver and the stall watch see this book and a send, never the Allocator.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab import lots
from matterfab.config import settings_problem
from matterfab.errors import IntegrityError, StackError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LineCatalogue
from matterfab.matter import nvs
from matterfab.messages import ManifestRef, WorkOrder
from matterfab.messages.base import order_key
from matterfab.s3 import ObjectStore
from matterfab.services.allocator import allocation
from matterfab.services.allocator.claim_chain import ClaimChains, ReadOrder

log = logging.getLogger(__name__)

JSON = "application/json"


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
        """Devices per lot for a new order."""
        return lots.lot_size(order.commissioning.iteration_count, self.seconds, self.max_devices)


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
        return await self.store.get_or_none(_key(order_id, "order.json"))

    async def put_order(self, order_id: str, body: bytes) -> bool:
        """Store `order.json` once; False when a different one is there already."""
        try:
            await self.store.put_once(_key(order_id, "order.json"), body, JSON)
        except IntegrityError:
            return False
        return True

    async def order(self, order_id: str) -> WorkOrder:
        """The accepted order (KeyError when it has no `order.json`)."""
        return _order(await self.store.get(_key(order_id, "order.json")))

    async def quantity(self, order_id: str) -> int | None:
        """The accepted order's device count, or None when it has no `order.json`."""
        raw = await self.order_body(order_id)
        return None if raw is None else int(_json(raw)["quantity"])

    # manifest.json (the assembler's)

    async def manifest_ref(self, order_id: str) -> ManifestRef | None:
        """A reference to the order's manifest, if it was made."""
        key = _key(order_id, "manifest.json")
        raw = await self.store.get_or_none(key)
        return None if raw is None else ManifestRef(key=key, sha256=hashlib.sha256(raw).hexdigest())

    async def finished(self, order_id: str) -> bool:
        """Whether the order's `manifest.json` exists (once seen, remembered)."""
        if order_id in self._finished:
            return True
        if await self.store.exists(_key(order_id, "manifest.json")):
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
                if await self.store.exists(_key(order_id, "order.json")):
                    out.append(order_id)
        return out

    # claim.json

    async def claim(self, order_id: str) -> allocation.Claim | None:
        """The order's `claim.json`, if it was written."""
        raw = await self.store.get_or_none(_key(order_id, "claim.json"))
        return None if raw is None else allocation.Claim.from_json(_json(raw))

    async def claim_record(self, order: WorkOrder) -> dict[str, Any]:
        """The order's record in its product's claim chain (KeyError if it has none)."""
        p = order.product
        return (await self.claims.chain(p.vendor_id, p.product_id)).by_order[order.order_id]

    async def settle_claim(self, order: WorkOrder, record: dict[str, Any]) -> allocation.Claim:
        """The order's own copy of its claim record's counter ranges, and its lot size.

        As stored, else written now (the lot size from the lot settings, the line's current key).
        """
        key = _key(order.order_id, "claim.json")
        existing = await self.store.get_or_none(key)
        if existing is not None:
            return allocation.Claim.from_json(_json(existing))
        claim = allocation.Claim(
            order.order_id,
            record["serial_start"],
            record["serial_count"],
            record["discriminator_start"],
            self.lots.lot_size(order),
            await self._line_key(order),
        )
        try:
            await self.store.put_once(key, json.dumps(claim.to_json()).encode(), JSON)
        except IntegrityError:
            # Another instance allocated this order at the same time; its claim stands.
            return allocation.Claim.from_json(_json(await self.store.get(key)))
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
        raw = await self.store.get_or_none(_chunk_key(order_id, chunk))
        return None if raw is None else list(_json(raw))

    async def allocate(
        self, order: WorkOrder, claim: allocation.Claim, chunk: int
    ) -> list[dict[str, Any]]:
        """A chunk's devices: as stored, else allocated now and stored write-once."""
        key = _chunk_key(order.order_id, chunk)
        existing = await self.store.get_or_none(key)
        if existing is not None:
            return list(_json(existing))

        def wrap_nvs_keys(dev_id: str) -> str:
            return self.wrapper.wrap(nvs.generate_xts_keys(), f"nvs-keys:{dev_id}")

        devices = allocation.allocate_chunk(order, claim, chunk, wrap_nvs_keys)
        try:
            await self.store.put_once(key, json.dumps(devices).encode(), JSON)
        except IntegrityError:
            return list(_json(await self.store.get(key)))
        return devices

    # ready/ (the assembler's progress)

    async def ready_chunks(
        self, order_id: str, seen: Collection[str]
    ) -> list[tuple[str, list[int]]]:
        """The assembler's ready chunks not in `seen`: (chunk name, device indices in it)."""
        out = []
        for key in await self.store.list_keys(_ready_prefix(order_id)):
            if key in seen:
                continue
            raw = await self.store.get_or_none(key)
            if raw is None:
                continue
            out.append((key, [int(r["index"]) for r in _json(raw)["records"]]))
        return out

    # emitted.json (a hint)

    async def emitted(self, order_id: str) -> dict[int, int] | None:
        """Where each partition's log ended once the order's devices were sent, if recorded."""
        raw = await self.store.get_or_none(_key(order_id, "emitted.json"))
        return None if raw is None else {int(p): o for p, o in _json(raw)["ends"].items()}

    async def put_emitted(self, order_id: str, topic: str, ends: dict[int, int]) -> None:
        """Record where `topic`'s partitions ended once the order's devices were sent."""
        body = json.dumps({"topic": topic, "ends": ends}, sort_keys=True).encode()
        await self.store.put(_key(order_id, "emitted.json"), body, JSON)


def order_reader(store: ObjectStore) -> ReadOrder:
    """Reads an order's stored `order.json` (None if absent), for `ClaimChains` without a book."""

    async def read(order_id: str) -> WorkOrder | None:
        raw = await store.get_or_none(_key(order_id, "order.json"))
        return None if raw is None else _order(raw)

    return read


def _key(order_id: str, name: str) -> str:
    return order_key(order_id, name)


def _chunk_key(order_id: str, chunk: int) -> str:
    return order_key(order_id, f"allocation/{chunk:05d}.json")


def _ready_prefix(order_id: str) -> str:
    return order_key(order_id, "ready/")


def _json(raw: bytes) -> Any:
    return json.loads(raw)


def _order(raw: bytes) -> WorkOrder:
    return WorkOrder.model_validate_json(raw)
