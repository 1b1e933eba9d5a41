"""Typed reads and writes of the bucket's objects: what services call instead of a key and
`json.loads`.

Each function names one object (its key from `bucket.keys`, its model from `bucket.models` or
the module that owns it) and returns the model, or None where the object may not exist yet.
Writes of write-once objects go through `put_once`: the same bytes again are a no-op, other
bytes an IntegrityError, which the caller turns into its own rule (adopt, alarm).
"""

from __future__ import annotations

import json
from typing import Any

from matterfab.bucket import keys
from matterfab.bucket.models import (
    AllocationChunk,
    Emitted,
    MacClaim,
    Manifest,
    ManifestDevices,
    OrderClaim,
    OrderFields,
    ReadyChunk,
)
from matterfab.messages.work_order import WorkOrder
from matterfab.objectstore import Store, StoredObject

JSON = "application/json"

# --- order.json ---------------------------------------------------------------------------------


async def order_bytes(store: Store, order_id: str) -> bytes | None:
    """The order's stored `order.json` bytes (None: no accepted order of that id)."""
    return await store.get_or_none(keys.order_json(order_id))


async def read_order(store: Store, order_id: str) -> WorkOrder | None:
    """The accepted work order, or None when the bucket holds none of that id."""
    raw = await order_bytes(store, order_id)
    return None if raw is None else WorkOrder.model_validate_json(raw)


async def get_order(store: Store, order_id: str) -> WorkOrder:
    """The accepted work order (the store's NotFound when there is none)."""
    return WorkOrder.model_validate_json(await store.get(keys.order_json(order_id)))


async def read_order_fields(store: Store, order_id: str) -> OrderFields | None:
    """The fields services read of the stored order (lenient view), None when there is none."""
    raw = await order_bytes(store, order_id)
    return None if raw is None else OrderFields.from_bytes(raw)


async def order_doc(store: Store, order_id: str) -> dict[str, Any] | None:
    """The stored order as its JSON document, for writers that copy fields as stored
    (the manifest's summary); None when there is none."""
    raw = await order_bytes(store, order_id)
    return None if raw is None else dict(json.loads(raw))


async def has_order(store: Store, order_id: str) -> bool:
    """Whether the order was accepted (its `order.json` is stored)."""
    return await store.exists(keys.order_json(order_id))


async def put_order(store: Store, order_id: str, body: bytes) -> StoredObject:
    """Store an accepted order's encoded bytes, write-once."""
    return await store.put_once(keys.order_json(order_id), body, JSON)


# --- the allocator's objects ------------------------------------------------------------------


async def read_claim(store: Store, order_id: str) -> OrderClaim | None:
    """The order's `claim.json`, if it was written."""
    raw = await store.get_or_none(keys.claim_json(order_id))
    return None if raw is None else OrderClaim.from_bytes(raw)


async def put_claim(store: Store, claim: OrderClaim) -> StoredObject:
    """Store an order's claim, write-once."""
    return await store.put_once(keys.claim_json(claim.order_id), claim.to_bytes(), JSON)


async def read_allocation(store: Store, order_id: str, chunk: int) -> AllocationChunk | None:
    """Allocation chunk `chunk` of the order, if it was written."""
    raw = await store.get_or_none(keys.allocation_chunk(order_id, chunk))
    return None if raw is None else AllocationChunk.from_bytes(raw)


async def put_allocation(
    store: Store, order_id: str, chunk: int, devices: AllocationChunk
) -> StoredObject:
    """Store an allocation chunk, write-once."""
    return await store.put_once(keys.allocation_chunk(order_id, chunk), devices.to_bytes(), JSON)


async def read_emitted(store: Store, order_id: str) -> Emitted | None:
    """The order's `emitted.json` hint, if any."""
    raw = await store.get_or_none(keys.emitted_json(order_id))
    return None if raw is None else Emitted.from_bytes(raw)


async def put_emitted(store: Store, order_id: str, emitted: Emitted) -> StoredObject:
    """Overwrite the order's `emitted.json` hint."""
    return await store.put(keys.emitted_json(order_id), emitted.to_bytes(), JSON)


# --- the assembler's objects ------------------------------------------------------------------


async def ready_chunk_keys(store: Store, order_id: str) -> list[str]:
    """The keys of the order's ready chunks."""
    return await store.list_keys(keys.ready_prefix(order_id))


async def read_ready_chunk(store: Store, key: str) -> ReadyChunk | None:
    """One ready chunk (a key from `ready_chunk_keys`), None if it is gone."""
    raw = await store.get_or_none(key)
    return None if raw is None else ReadyChunk.from_bytes(raw)


async def put_ready_chunk(
    store: Store, name: str, order_id: str, records: list[dict[str, Any]]
) -> StoredObject:
    """Store one ready chunk (the assembler's entries, ReadyChunk.encode) under a fresh `name`
    (a uuid4 hex), write-once."""
    body = ReadyChunk.encode(order_id, records)
    return await store.put_once(keys.ready_chunk(order_id, name), body, JSON)


async def manifest_bytes(store: Store, order_id: str) -> bytes | None:
    """The order's `manifest.json` bytes (None: not completed)."""
    return await store.get_or_none(keys.manifest_json(order_id))


async def read_manifest(store: Store, order_id: str) -> Manifest | None:
    """The order's manifest (None: not completed)."""
    raw = await manifest_bytes(store, order_id)
    return None if raw is None else Manifest.from_bytes(raw)


async def manifest_doc(store: Store, order_id: str) -> tuple[bytes, dict[str, Any]] | None:
    """The order's manifest bytes and JSON document, for the commands that check it rule by
    rule (`verify`, `order fetch`) and report each problem themselves; None: not completed."""
    raw = await manifest_bytes(store, order_id)
    return None if raw is None else (raw, dict(json.loads(raw)))


async def read_manifest_devices(store: Store, order_id: str) -> list[dict[str, Any]] | None:
    """The device entries of the order's manifest (None: not completed)."""
    raw = await manifest_bytes(store, order_id)
    return None if raw is None else ManifestDevices.from_bytes(raw).devices


async def is_completed(store: Store, order_id: str) -> bool:
    """Whether the order's manifest is written (it is written last)."""
    return await store.exists(keys.manifest_json(order_id))


async def put_mac_claim(store: Store, claim: MacClaim) -> StoredObject:
    """Claim a MAC for a device, write-once (IntegrityError: another device holds it)."""
    return await store.put_once(keys.mac_key(claim.mac), claim.to_bytes(), JSON)


async def read_mac_claim(store: Store, mac: str) -> MacClaim | None:
    """Which device holds a MAC, if any."""
    raw = await store.get_or_none(keys.mac_key(mac))
    return None if raw is None else MacClaim.from_bytes(raw)


async def bindings_csv(store: Store, order_id: str) -> bytes | None:
    """The order's `bindings.csv`, if the stations' outcomes were written."""
    return await store.get_or_none(keys.bindings_csv(order_id))
