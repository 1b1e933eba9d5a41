"""Allocation time of a large pattern order, with the identity registry and without it.

The allocator's handler (`Allocator.handle`: validate, claim, allocate 1,000-device chunks
write-once, build and encode every `mfg.devices.allocated` message) runs on the in-memory
bucket, so the number is the allocator's own CPU, which is what the registry could add to;
the S3 requests differ by one (the registry reads `order.json` before claiming). The product's
claim chain already holds `prior` orders (patterns and explicit lists), read cold by a fresh
allocator as after a restart. "before" is the claim the allocator made before issue #12
(commit 5fd30b6: the counter-only record, `CounterOnlyClaims` below, kept as the baseline);
"after" is today's registry. Rounds alternate before/after; the best of each is reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from matterfab import catalogue, lines, sealing
from matterfab.errors import IntegrityError
from matterfab.keywrap import KeyWrapper
from matterfab.matter.identity import DISCRIMINATOR_MAX
from matterfab.messages.codec import encode
from matterfab.messages.work_order import WorkOrder
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.allocator import allocation
from matterfab.services.allocator.claim_chain import ClaimChains, chain_prefix
from matterfab.services.allocator.order_book import OrderBook, order_reader
from matterfab.services.allocator.service import Allocator, parse_submission

PROFILE = "bench-alloc"
VID, PID = 0xFFF1, 0x8000


class CounterOnlyClaims:
    """The allocator's claim before the registry: the next counter record, nothing checked."""

    def __init__(self, store: MemoryObjectStore):
        self.store = store

    async def claim(self, order: WorkOrder, order_sha256: str) -> dict[str, Any]:
        """Append a counter-only claim record after the chain's last one (as in 5fd30b6)."""
        prefix = chain_prefix(order.product.vendor_id, order.product.product_id)
        keys = sorted(await self.store.list_keys(prefix))
        seq = int(keys[-1].rsplit("/", 1)[1].split(".")[0]) if keys else 0
        last = json.loads(await self.store.get(keys[-1])) if keys else None
        while True:
            record = {
                "order_id": order.order_id,
                "serial_start": last["serial_start"] + last["serial_count"] if last else 1,
                "serial_count": allocation.counter_serials_needed(order),
                "discriminator_start": (
                    (last["discriminator_start"] + last["devices"]) % (DISCRIMINATOR_MAX + 1)
                    if last
                    else 0
                ),
                "devices": order.quantity,
            }
            key = f"{prefix}{seq + 1:010d}.json"
            try:
                await self.store.put_once(key, json.dumps(record, sort_keys=True).encode())
            except IntegrityError:
                seq += 1
                last = json.loads(await self.store.get(key))
                continue
            return record


def work_order(order_id: str, quantity: int, **kw: Any) -> bytes:
    """A work order on the bench profile, as the allocator receives it."""
    doc = {
        "type": "work-order/v1",
        "order_id": order_id,
        "product": {"vendor_id": VID, "product_id": PID},
        "quantity": quantity,
        "mfg_date": "2026-11-29",
        "attestation_profile": PROFILE,
        **kw,
    }
    return json.dumps(doc).encode()


async def _store_with_history(prior: int) -> MemoryObjectStore:
    """A bucket whose product chain holds `prior` accepted orders (every third explicit)."""
    store = MemoryObjectStore()
    await catalogue.publish(store, {"name": PROFILE, "vendor_id": VID, "product_id": PID})
    # Orders go to line local (issue #20), as on a stack `make up` started.
    key = sealing.generate().public_key()
    await lines.register(store, lines.DEFAULT_LINE, sealing.public_pem(key), new_line=True)
    claims = ClaimChains(store, order_reader(store))
    for k in range(prior):
        if k % 3 == 2:
            kw: dict[str, Any] = {"devices": [{"serial_num": f"X{k}-{i}"} for i in range(100)]}
        else:
            kw = {"serial": {"prefix": f"P{k}-", "start": 0, "digits": 6}}
        order = parse_submission(work_order(f"PRIOR-{k}", 100, **kw)).order
        assert order is not None
        await claims.claim(order, f"{k:064x}")
    return store


async def _allocate(store: MemoryObjectStore, variant: str, order_id: str, devices: int) -> float:
    encoded = 0

    async def send(emits: Sequence[Emit]) -> None:
        nonlocal encoded
        for e in emits:  # what the producer would serialize
            encoded += len(encode(e.message))

    allocator = Allocator(OrderBook(store, KeyWrapper(os.urandom(32))), send)
    if variant == "before":
        allocator.book.claims = CounterOnlyClaims(store)
    sub = parse_submission(
        work_order(order_id, devices, serial={"prefix": f"{order_id}-", "start": 0, "digits": 7})
    )
    started = time.perf_counter()
    result = await allocator.handle(sub)
    seconds = time.perf_counter() - started
    assert result == [] and encoded > 0, result
    return seconds


def measure(devices: int = 100_000, prior: int = 300, rounds: int = 3) -> dict[str, Any]:
    """Best-of-`rounds` allocation seconds before and after the registry, and its objects."""

    async def run() -> dict[str, Any]:
        store = await _store_with_history(prior)
        times: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(rounds):
            for variant in ("before", "after") if r % 2 == 0 else ("after", "before"):
                order_id = f"BENCH-{variant}-{r}"
                times[variant].append(round(await _allocate(store, variant, order_id, devices), 3))
        prefix = chain_prefix(VID, PID)
        records = {k: store.objects[k] for k in await store.list_keys(prefix)}
        mine = [v for v in records.values() if json.loads(v)["order_id"] == "BENCH-after-0"]
        before, after = min(times["before"]), min(times["after"])
        return {
            "devices": devices,
            "prior_orders_in_chain": prior,
            "before_s": before,
            "after_s": after,
            "after_over_before": round(after / before, 3),
            "runs": times,
            "registry_objects_per_order": len(mine),
            "claim_record_bytes": len(mine[0]) if mine else None,
        }

    return asyncio.run(run())


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
