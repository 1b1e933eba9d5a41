"""Reading what an ObjectRef points at: a whole object, or one device's piece of a lot object.

`order fetch`, `verify` and the assembler read refs from manifests and messages. A lot object
holds the pieces of many devices, so the reader fetches each lot once (concurrent readers of
one lot share the GET) and keeps the last few (at most `keep` lots and `keep_bytes` bytes: an
`images.lot` is ~60-180 KB, its flash images' 0xFF runs elided), then cuts each piece and
checks its sha256.
A sealed object's ref (`ObjectRef.sealed`) is checked like any other: the digest is the
sealed bytes'; opening it takes the line's key (`lines.LineKeys.open`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from matterfab import sealing
from matterfab.errors import IntegrityError
from matterfab.messages.base import ObjectRef
from matterfab.objectstore import Store


class RefReader:
    """Reads refs from one store, sharing lot objects between the pieces that lie in them."""

    def __init__(self, store: Store, keep: int = 64, keep_bytes: int = 64 << 20):
        self.store = store
        self.keep = keep
        self.keep_bytes = keep_bytes
        self._held = 0  # bytes of the lots kept
        self._lots: OrderedDict[str, bytes] = OrderedDict()
        self._loading: dict[str, asyncio.Future[bytes]] = {}

    async def read(self, ref: ObjectRef | Mapping[str, Any]) -> bytes:
        """The bytes `ref` stands for; IntegrityError when they are not what it says."""
        r = ref if isinstance(ref, ObjectRef) else ObjectRef.model_validate(dict(ref))
        if r.offset is None:
            data = await self.store.get(r.key)
        else:
            body = await self._lot(r.key)
            data = body[r.offset : r.offset + r.size]
        if len(data) != r.size or hashlib.sha256(data).hexdigest() != r.sha256:
            where = r.key if r.offset is None else f"{r.key} bytes {r.offset}+{r.size}"
            raise IntegrityError(f"{where}: sha256 does not match its ref")
        return data

    async def _lot(self, key: str) -> bytes:
        body = self._lots.get(key)
        if body is not None:
            self._lots.move_to_end(key)
            return body
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            body = await self.store.get(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(body)
        self._lots[key] = body
        self._held += len(body)
        while len(self._lots) > 1 and (len(self._lots) > self.keep or self._held > self.keep_bytes):
            self._held -= len(self._lots.popitem(last=False)[1])
        return body


def sealed_header_problem(
    data: bytes, ref: ObjectRef | Mapping[str, Any], order_id: str, device_id: str, file: str
) -> str | None:
    """What is wrong with a sealed object's plain header, checked without the key (its line,
    key, order, device and file against the ref that points at it), or None."""
    r = ref if isinstance(ref, ObjectRef) else ObjectRef.model_validate(dict(ref))
    if r.sealed is None:
        return None
    expected = sealing.Binding(r.sealed.line, r.sealed.key, order_id, device_id, file)
    try:
        found, _ = sealing.parse(data)
    except sealing.SealError as exc:
        return str(exc)
    return sealing.mismatch(found, expected)
