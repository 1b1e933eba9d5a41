"""Per-product counters that never repeat across orders, restarts or instances.

A counter is a chain of write-once claim objects in the bucket,
`state/products/<VVVV>-<PPPP>/claims/<seq>.json`, each reserving a range of serial numbers and
discriminators after the previous one. Claiming writes the next sequence number with a
conditional PUT: of two allocators racing for one number exactly one wins, and the loser reads
the winner's claim and tries the next number. Nothing is ever rewritten, so a restart or a
second instance can only skip values, never hand one out twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from matterfab.errors import IntegrityError
from matterfab.matter.identity import DISCRIMINATOR_MAX
from matterfab.s3 import ObjectStore

log = logging.getLogger(__name__)

DISCRIMINATOR_SPACE = DISCRIMINATOR_MAX + 1


def _prefix(vendor_id: int, product_id: int) -> str:
    return f"state/products/{vendor_id:04X}-{product_id:04X}/claims/"


def _key(prefix: str, seq: int) -> str:
    return f"{prefix}{seq:010d}.json"


class ProductCounters:
    """Claims ranges from the per-product counter chains."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._last: dict[str, tuple[int, dict[str, Any]]] = {}  # prefix -> (seq, claim)

    async def _tail(self, prefix: str) -> tuple[int, dict[str, Any] | None]:
        cached = self._last.get(prefix)
        if cached:
            return cached
        keys = sorted(await self.store.list_keys(prefix))
        if not keys:
            return 0, None
        seq = int(keys[-1].rsplit("/", 1)[1].split(".")[0])
        return seq, json.loads(await self.store.get(keys[-1]))

    async def claim(
        self, vendor_id: int, product_id: int, order_id: str, serials: int, devices: int
    ) -> dict[str, Any]:
        """Reserve `serials` serial numbers and `devices` discriminators for one order."""
        prefix = _prefix(vendor_id, product_id)
        seq, last = await self._tail(prefix)
        while True:
            serial_start = last["serial_start"] + last["serial_count"] if last else 1
            disc_start = (
                (last["discriminator_start"] + last["devices"]) % DISCRIMINATOR_SPACE if last else 0
            )
            claim = {
                "order_id": order_id,
                "serial_start": serial_start,
                "serial_count": serials,
                "discriminator_start": disc_start,
                "devices": devices,
            }
            key = _key(prefix, seq + 1)
            try:
                await self.store.put_once(
                    key, json.dumps(claim, sort_keys=True).encode(), "application/json"
                )
            except IntegrityError:
                # Another allocator took this number first: follow the chain.
                seq += 1
                last = json.loads(await self.store.get(key))
                continue
            self._last[prefix] = (seq + 1, claim)
            log.info("claimed counter range", extra={"order_id": order_id, "mf_claim_seq": seq + 1})
            return claim
