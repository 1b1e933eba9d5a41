"""Imported DACs in the bucket: batches, the pool of a profile, and each DAC's one claim.

Objects (all write-once), per attestation profile P:

    dac-pool/P/batches/<batch>.json    the batch: its DACs' fingerprints, in import order
    dac-pool/P/dacs/<fp>.json          one DAC: certificate (DER, base64), its key wrapped
                                       under the KEK (bound to `imported-dac:P:<fp>`), batch
    dac-pool/P/claims/<fp>.json        the one device that uses it: order_id, index
    orders/<order>/imported-dacs/<index7>.json   which DAC a device took (its fingerprint)

`<fp>` is the SHA-256 of the DAC's public key, so the same DAC (or the same key under another
certificate) cannot enter the pool twice, in one batch or across batches. A DAC is claimed by
a conditional write (If-None-Match) of its claim object: two signers, two orders, never take
the same DAC. A device's choice is recorded write-once before its DAC is used, so a
redelivered lot takes the same DACs again.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from matterfab.bucket import keys
from matterfab.bucket.models import BatchDac, DacChoice, ImportBatch, ImportedDac, PoolClaim
from matterfab.errors import FieldError, IntegrityError, InvalidInput, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.matter.dac_import import CheckedDac
from matterfab.s3 import ObjectStore

PREFIX = keys.DAC_POOL
BATCH_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
JSON = "application/json"


def batch_key(profile: str, batch: str) -> str:
    """Where a batch's record is stored."""
    return keys.dac_pool_batch_key(profile, batch)


def dac_key(profile: str, fp: str) -> str:
    """Where one imported DAC is stored."""
    return keys.dac_pool_dac_key(profile, fp)


def claim_key(profile: str, fp: str) -> str:
    """The claim object that gives one DAC to one device."""
    return keys.dac_pool_claim_key(profile, fp)


def device_choice_key(order_id: str, index: int) -> str:
    """Which imported DAC device `index` of an order took."""
    return keys.imported_dac_choice_key(order_id, index)


def key_context(profile: str, fp: str) -> str:
    """The associated data an imported DAC's wrapped key is bound to."""
    return f"imported-dac:{profile}:{fp}"


@dataclass(frozen=True)
class PoolDac:
    """An imported DAC as stored: its fingerprint, DER and wrapped key."""

    fingerprint: str
    der: bytes
    key_wrapped: str
    batch: str


async def import_batch(
    store: ObjectStore,
    wrapper: KeyWrapper,
    profile: str,
    batch: str,
    dacs: list[CheckedDac],
) -> int:
    """Store a checked batch; InvalidInput if the batch name is taken or a DAC is pooled already.

    Duplicates are looked for before anything is written, so a refused batch leaves nothing.
    """
    if not BATCH_PATTERN.match(batch):
        raise invalid("batch", "must be 1..64 of [A-Za-z0-9._-]")
    if await store.exists(batch_key(profile, batch)):
        raise invalid("batch", f"{batch!r} was imported already (batches are write-once)")
    pooled = {
        k.rsplit("/", 1)[1].removesuffix(".json") for k in await _keys(store, profile, "dacs")
    }
    dups = [
        FieldError(d.name, f"is already in the pool of {profile}")
        for d in dacs
        if d.fingerprint in pooled
    ]
    if dups:
        raise InvalidInput(dups[:50])
    record = ImportBatch(
        batch=batch,
        profile=profile,
        count=len(dacs),
        imported_at=datetime.now(UTC).isoformat(),
        dacs=[BatchDac(fingerprint=d.fingerprint, name=d.name, serial=d.serial) for d in dacs],
    )
    await store.put_once(batch_key(profile, batch), record.to_bytes(), JSON)
    for d in dacs:
        doc = ImportedDac(
            fingerprint=d.fingerprint,
            batch=batch,
            name=d.name,
            serial=d.serial,
            dac_b64=base64.b64encode(d.der).decode(),
            key_wrapped=wrapper.wrap(d.key_raw, key_context(profile, d.fingerprint)),
        )
        if not await store.put_if_absent(dac_key(profile, d.fingerprint), doc.to_bytes(), JSON):
            raise invalid(d.name, f"is already in the pool of {profile} (imported meanwhile)")
    return len(dacs)


async def _keys(store: ObjectStore, profile: str, kind: str) -> list[str]:
    return await store.list_keys(keys.dac_pool_prefix(profile, kind))


def _fp(key: str) -> str:
    return key.rsplit("/", 1)[1].removesuffix(".json")


async def unused(store: ObjectStore, profile: str) -> list[str]:
    """Fingerprints of the profile's DACs that no device has claimed, in a stable order."""
    claimed = {_fp(k) for k in await _keys(store, profile, "claims")}
    return sorted(_fp(k) for k in await _keys(store, profile, "dacs") if _fp(k) not in claimed)


async def load(store: ObjectStore, profile: str, fp: str) -> PoolDac:
    """One pooled DAC."""
    doc = ImportedDac.from_bytes(await store.get(dac_key(profile, fp)))
    if doc.fingerprint != fp:
        raise IntegrityError(f"{dac_key(profile, fp)} holds the DAC of {doc.fingerprint}")
    return PoolDac(fp, base64.b64decode(doc.dac_b64), doc.key_wrapped, doc.batch)


async def take(
    store: ObjectStore, profile: str, order_id: str, indices: list[int]
) -> dict[int, str]:
    """One unused DAC per device index (the same ones again on a redelivery).

    Raises IntegrityError when the pool runs dry (the allocator checked the order's size when
    it accepted it; another order may have taken DACs since).
    """
    chosen: dict[int, str] = {}
    missing = []
    for i in indices:
        raw = await store.get_or_none(device_choice_key(order_id, i))
        if raw is None:
            missing.append(i)
        else:
            chosen[i] = DacChoice.from_bytes(raw).fingerprint
    if not missing:
        return chosen
    candidates = iter(await unused(store, profile))
    for i in missing:
        claim = PoolClaim(order_id=order_id, index=i).to_bytes()
        for fp in candidates:
            if await store.put_if_absent(claim_key(profile, fp), claim, JSON):
                break
        else:
            raise IntegrityError(
                f"profile {profile} has no unused imported DAC left for {order_id} device {i}"
            )
        choice = DacChoice(fingerprint=fp).to_bytes()
        if not await store.put_if_absent(device_choice_key(order_id, i), choice, JSON):
            # A racing signer chose first; its choice stands (this DAC stays claimed, unused).
            fp = DacChoice.from_bytes(await store.get(device_choice_key(order_id, i))).fingerprint
        chosen[i] = fp
    return chosen


__all__ = [
    "PoolDac",
    "batch_key",
    "claim_key",
    "dac_key",
    "device_choice_key",
    "import_batch",
    "key_context",
    "load",
    "take",
    "unused",
]
