"""The object-store seam: what services need of S3, as a Protocol, and an in-memory store.

`matterfab.s3.ObjectStore` (obstore over the S3 API) is the one real implementation.
`MemoryObjectStore` keeps the same semantics in a dict, for fast tests of handlers and pure
service logic: write-once objects refuse different bytes (IntegrityError) and answer a
redelivery of the same bytes with the same `StoredObject` (created=False); user metadata is
kept with the object and comes back lower-cased, as S3 returns it. It never replaces the
real-stack tests: `tests/integration/test_objectstore_contract.py` runs one set of checks on
both, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from matterfab.errors import IntegrityError
from matterfab.s3 import StoredObject


@runtime_checkable
class Store(Protocol):
    """The calls services make on the object store (all keys are bucket-relative)."""

    async def put_if_absent(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Write `data` (and user `metadata`) at `key` if the key is free; False if taken."""
        ...

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Write once; same bytes again is a no-op, different bytes raise IntegrityError."""
        ...

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        deadline_s: float | None = None,
    ) -> StoredObject:
        """Write `data` at `key`, replacing any object there (mutable objects only);
        `deadline_s` bounds the retries (0: one attempt, for writes that repeat anyway)."""
        ...

    async def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The object's bytes and user metadata, or None if absent."""
        ...

    async def get_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None if absent."""
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; KeyError(key) if absent."""
        ...

    async def get_range(self, key: str, offset: int, size: int) -> bytes | None:
        """Bytes `offset`..`offset+size-1` of the object (one ranged GET; fewer bytes when the
        object ends before), or None if absent."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""
        ...

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, in lexical order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object at `key` (no error if absent)."""
        ...


class MemoryObjectStore:
    """An object store in a dict, with the real store's write-once semantics."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.content_types: dict[str, str] = {}
        self.requests = 0  # every call counts as one request, as a bench of S3 traffic would

    async def put_if_absent(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Write `data` (and user `metadata`) at `key` if the key is free; False if taken."""
        self.requests += 1
        if key in self.objects:
            return False
        self._store(key, data, content_type, metadata)
        return True

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Write once; same bytes again is a no-op, different bytes raise IntegrityError."""
        digest = hashlib.sha256(data).hexdigest()
        if await self.put_if_absent(key, data, content_type):
            return StoredObject(key, digest, len(data), created=True)
        existing = await self.get(key)
        if existing != data:
            raise IntegrityError(
                f"object {key} already exists with different content "
                f"(stored sha256 {hashlib.sha256(existing).hexdigest()}, new sha256 {digest}); "
                "write-once objects are never overwritten"
            )
        return StoredObject(key, digest, len(data), created=False)

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        deadline_s: float | None = None,
    ) -> StoredObject:
        """Write `data` at `key`, replacing any object there (mutable objects only)."""
        self.requests += 1
        self._store(key, data, content_type, None)
        return StoredObject(key, hashlib.sha256(data).hexdigest(), len(data), created=True)

    async def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The object's bytes and user metadata, or None if absent."""
        self.requests += 1
        if key not in self.objects:
            return None
        return self.objects[key], dict(self.metadata.get(key, {}))

    async def get_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None if absent."""
        found = await self.get_with_metadata(key)
        return None if found is None else found[0]

    async def get(self, key: str) -> bytes:
        """The object's bytes; KeyError(key) if absent."""
        data = await self.get_or_none(key)
        if data is None:
            raise KeyError(key)
        return data

    async def get_range(self, key: str, offset: int, size: int) -> bytes | None:
        """Bytes `offset`..`offset+size-1` of the object (one ranged GET; fewer bytes when the
        object ends before), or None if absent."""
        self.requests += 1
        data = self.objects.get(key)
        return None if data is None else data[offset : offset + size]

    async def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""
        self.requests += 1
        return key in self.objects

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, in lexical order."""
        self.requests += 1
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def delete(self, key: str) -> None:
        """Remove the object at `key` (no error if absent)."""
        self.requests += 1
        self.objects.pop(key, None)
        self.metadata.pop(key, None)
        self.content_types.pop(key, None)

    def _store(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None
    ) -> None:
        self.objects[key] = bytes(data)
        self.content_types[key] = content_type
        # S3 user metadata comes back with lower-cased names (x-amz-meta-* headers).
        self.metadata[key] = {k.lower(): v for k, v in (metadata or {}).items()}
