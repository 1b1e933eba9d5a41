"""Per-product claim chains: counters and identities that never repeat across orders.

Each product has a chain of write-once claim records in the bucket,
`state/products/<VVVV>-<PPPP>/claims/<seq>.json`, one per accepted order. A record reserves
the order's range of the per-product serial counter and of discriminators (each after the
previous record's), and lists every serial number the order uses (pattern, explicit and
counter, as canonical ranges: see `identity_registry.py`) and every unique ID it supplies.

Appending is the only write. An allocator checks the order against every record before the
sequence number it tries, then writes that number with a conditional PUT: of two allocators
racing for one number exactly one wins, and the loser reads the winner's record, checks its
order against it too, and tries the next number. So the records form one linear history in
which no serial or unique ID is held twice, and a rejected order writes nothing. Nothing is
ever rewritten, so a restart or a second instance can only skip counter values, never hand
one out twice. Records are cached in memory; only the new tail of a chain is ever read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from matterfab.bucket import keys as bucket_keys
from matterfab.bucket.models import ClaimRecord
from matterfab.errors import FieldError, IntegrityError, MatterfabError
from matterfab.matter.identity import DISCRIMINATOR_MAX
from matterfab.messages.work_order import WorkOrder
from matterfab.s3 import ObjectStore
from matterfab.services.allocator import allocation, identity_registry
from matterfab.services.allocator.identity_registry import (
    HeldIdentities,
    IdentityRegistry,
    OrderIdentities,
    Run,
)

log = logging.getLogger(__name__)

DISCRIMINATOR_SPACE = DISCRIMINATOR_MAX + 1
READ_CONCURRENCY = 16  # GETs in flight while loading a chain


class OrderConflict(MatterfabError):
    """The order asks for identities another order holds (or reuses an order_id)."""

    code = "order_conflict"

    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


PRODUCTS = bucket_keys.STATE_PRODUCTS


def chain_prefix(vendor_id: int, product_id: int) -> str:
    """Where a product's claim records live."""
    return bucket_keys.chain_prefix(vendor_id, product_id)


def _key(prefix: str, seq: int) -> str:
    return bucket_keys.chain_record_key(prefix, seq)


def record_identities(
    vendor_id: int, product_id: int, record: dict[str, Any], order: WorkOrder | None = None
) -> HeldIdentities:
    """The identities a claim record holds.

    A record written before the registry holds only counter ranges; with its order (from the
    order's `order.json`) it holds what the order supplied too, as a record written today would.
    """
    if "serials" in record:
        runs = tuple(Run.from_json(r) for r in record["serials"])
        return HeldIdentities(record["order_id"], runs, tuple(record.get("rd_id_uids", ())))
    counter = identity_registry.counter_runs(
        vendor_id, product_id, record["serial_start"], record["serial_count"]
    )
    if order is None:
        return HeldIdentities(record["order_id"], tuple(counter))
    return OrderIdentities.of(order).held(record["order_id"], counter)


@dataclass
class ClaimChain:
    """What this process knows of one product's chain: records 1..seq."""

    vendor_id: int
    product_id: int
    prefix: str
    seq: int = 0
    last: dict[str, Any] | None = None
    registry: IdentityRegistry = field(default_factory=IdentityRegistry)
    by_order: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, seq: int, record: dict[str, Any], order: WorkOrder | None = None) -> None:
        """Take record `seq` (the next one) into the cache and the registry."""
        assert seq == self.seq + 1, f"claim chain {self.prefix}: record {seq} after {self.seq}"
        self.seq, self.last = seq, record
        self.by_order.setdefault(record["order_id"], record)
        self.registry.add(record_identities(self.vendor_id, self.product_id, record, order))


ReadOrder = Callable[[str], Awaitable[WorkOrder | None]]


class ClaimChains:
    """Reads and extends the per-product claim chains of one bucket.

    `read_order(order_id)` is the order's stored `order.json` (None if absent): a record
    written before the registry holds only counter ranges, its order tells the rest
    (`order_book.order_reader`).
    """

    def __init__(self, store: ObjectStore, read_order: ReadOrder):
        self.store = store
        self._read_order = read_order
        self._chains: dict[str, ClaimChain] = {}

    async def products(self) -> list[tuple[int, int]]:
        """(vendor_id, product_id) of every product with a claim chain in the bucket, sorted."""
        return sorted(bucket_keys.chain_products(await self.store.list_keys(PRODUCTS)))

    async def chain(self, vendor_id: int, product_id: int, refresh: bool = True) -> ClaimChain:
        """The product's chain: loaded on first use, its new tail read when `refresh`."""
        prefix = chain_prefix(vendor_id, product_id)
        chain = self._chains.get(prefix)
        if chain is None:
            chain = ClaimChain(vendor_id, product_id, prefix)
            keys = sorted(await self.store.list_keys(prefix))
            sem = asyncio.Semaphore(READ_CONCURRENCY)

            async def read(key: str) -> tuple[dict[str, Any], WorkOrder | None]:
                async with sem:
                    return await self._read(key)

            records = await asyncio.gather(*(read(k) for k in keys))
            for key, (record, order) in zip(keys, records, strict=True):
                chain.add(bucket_keys.chain_record_seq(key), record, order)
            self._chains[prefix] = chain
        elif refresh:
            while (raw := await self.store.get_or_none(_key(prefix, chain.seq + 1))) is not None:
                chain.add(chain.seq + 1, *await self._parse(raw))
        return chain

    async def _read(self, key: str) -> tuple[dict[str, Any], WorkOrder | None]:
        """A claim record, and for a record older than the registry its order (if stored)."""
        return await self._parse(await self.store.get(key))

    async def _parse(self, raw: bytes) -> tuple[dict[str, Any], WorkOrder | None]:
        record = ClaimRecord.from_bytes(raw).to_doc()
        if "serials" in record:
            return record, None
        return record, await self._read_order(record["order_id"])

    async def claim(self, order: WorkOrder, order_sha256: str) -> dict[str, Any]:
        """Append the order's claim record, or return the one it already has.

        Raises OrderConflict naming each identity another order holds; then nothing is written.
        """
        p = order.product
        chain = await self.chain(p.vendor_id, p.product_id, refresh=False)
        ids = OrderIdentities.of(order)
        own: IdentityRegistry | None = None
        counter_serials = allocation.counter_serials_needed(order)
        while True:
            existing = chain.by_order.get(order.order_id)
            if existing is not None:
                if existing.get("order_sha256", order_sha256) != order_sha256:
                    raise OrderConflict(
                        [FieldError("order_id", "is already used by a different work order")]
                    )
                return existing
            errors = identity_registry.conflicts(chain.registry, order, ids)
            if errors:
                raise OrderConflict(errors)
            last = chain.last
            start = last["serial_start"] + last["serial_count"] if last else 1
            if counter_serials:
                own = own or ids.own()
                start = chain.registry.free_counter_start(
                    p.vendor_id, p.product_id, start, counter_serials, own
                )
            disc_start = (
                (last["discriminator_start"] + last["devices"]) % DISCRIMINATOR_SPACE if last else 0
            )
            counter = identity_registry.counter_runs(
                p.vendor_id, p.product_id, start, counter_serials
            )
            held = ids.held(order.order_id, counter)
            record = {
                "order_id": order.order_id,
                "order_sha256": order_sha256,
                "serial_start": start,
                "serial_count": counter_serials,
                "discriminator_start": disc_start,
                "devices": order.quantity,
                "serials": [r.to_json() for r in held.serials],
                "rd_id_uids": list(held.rd_id_uids),
            }
            seq = chain.seq + 1
            body = ClaimRecord.model_validate(record).to_bytes()
            try:
                await self.store.put_once(_key(chain.prefix, seq), body, "application/json")
            except IntegrityError:
                # Another allocator appended this number first: check against its record too.
                chain.add(seq, *await self._read(_key(chain.prefix, seq)))
                continue
            chain.add(seq, record)
            log.info("claimed identities", extra={"order_id": order.order_id, "mf_claim_seq": seq})
            return record
