"""The public attestation-profile catalogue in the bucket: `profiles/<name>.json`.

PAI keys never leave the signer, but the allocator must refuse an order whose profile does not
exist or does not match its vendor before any device is made. The signer (and `pki init-test`,
`pki add`, `pki add-cd`) publish each profile's public part here: name, kind, VID, optional PID,
PAA and PAI certificates, CD, and `issues_dacs` (false for a CD-only profile, whose PAA/PAI
are null; summaries published before that key existed all issue DACs).
"""

from __future__ import annotations

import time
from typing import Any

from matterfab.bucket import keys
from matterfab.bucket.models import ProfileSummary
from matterfab.s3 import ObjectStore

PREFIX = keys.PROFILES
CACHE_SECONDS = 5.0


def key_for(name: str) -> str:
    """Object key of a profile's public summary."""
    return keys.profile_key(name)


async def publish(store: ObjectStore, summary: dict[str, Any]) -> None:
    """Write (or refresh) a profile's public summary; it holds no key material."""
    body = ProfileSummary.model_validate(summary).to_bytes()
    await store.put(key_for(summary["name"]), body, content_type="application/json")


class Catalogue:
    """Reads profile summaries with a short cache, so a new profile is usable within seconds."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def get(self, name: str) -> dict[str, Any] | None:
        """The summary of profile `name`, or None when no such profile is published."""
        hit = self._cache.get(name)
        now = time.monotonic()
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        raw = await self.store.get_or_none(key_for(name))
        summary = ProfileSummary.from_bytes(raw).to_doc() if raw is not None else None
        self._cache[name] = (now, summary)
        return summary
