"""Revocations and CRL numbers: write-once records, so concurrent operators lose nothing.

A DAC has at most one revocation record, `fleet/revocations/<profile>/<serial>.json`, written
with a conditional PUT: the first revoke wins, a repeat (any reason) is a no-op that reports
the record already there. A CRL lists the records found by one LIST of the profile's prefix,
so a revocation stored before the listing is in every later CRL.

CRL numbers are a chain of write-once records `fleet/crl/<profile>/<number>.json`: the next
number is one more than the highest listed, taken by a conditional PUT; a writer that loses
the race takes the number after. Numbers therefore only grow, and never repeat.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from matterfab.bucket import objects
from matterfab.errors import IntegrityError, invalid
from matterfab.fleet import keys
from matterfab.fleet.index import NotFound, current_images, device_view, resolve
from matterfab.fleet.records import CrlIssue, Revocation
from matterfab.matter.crl import RevokedDac, check_reason
from matterfab.messages.base import ORDER_ID_RE
from matterfab.messages.base import device_id as make_device_id
from matterfab.objectstore import Store

FETCH_CONCURRENCY = 32
MAX_CRL_ATTEMPTS = 20


def operator() -> str:
    """Who is acting, for records: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Target:
    """One DAC to revoke."""

    profile: str
    device_id: str
    generation: int
    dac_serial: str


@dataclass(frozen=True)
class Outcome:
    """What revoking one DAC did: `created` False when it was revoked before."""

    record: Revocation
    created: bool


async def revoke(store: Store, target: Target, reason: str, by: str) -> Outcome:
    """Revoke one DAC (idempotent: the first record stands)."""
    check_reason(reason)
    record = Revocation(
        dac_serial=target.dac_serial,
        profile=target.profile,
        device_id=target.device_id,
        generation=target.generation,
        reason=reason,
        by=by,
    )
    key = keys.revocation_key(target.profile, target.dac_serial)
    if await store.put_if_absent(key, record.to_bytes(), "application/json"):
        return Outcome(record, True)
    return Outcome(Revocation.model_validate_json(await store.get(key)), False)


async def device_target(store: Store, device_id: str) -> Target:
    """The current DAC of a device; NotFound / InvalidInput when it has none to revoke."""
    view = await device_view(store, device_id)
    if view.image is None:
        raise NotFound(f"device {device_id} has no DAC yet (state {view.state})")
    if not view.image.dac_serial:
        raise invalid("device", f"{device_id} has no DAC issued by matterfab ({view.dac_storage})")
    return Target(
        str(view.attestation_profile), device_id, view.image.generation, view.image.dac_serial
    )


async def dac_target(store: Store, dac_serial: str) -> Target:
    """The device and profile of a DAC serial (any generation, current or not)."""
    device_id = await resolve(store, "dac_serial", dac_serial)
    view = await device_view(store, device_id)
    serial = dac_serial.strip().lower().removeprefix("0x").replace(":", "")
    for dac in view.dacs:
        if dac["dac_serial"].lstrip("0") == serial.lstrip("0"):
            return Target(
                str(view.attestation_profile), device_id, dac["generation"], dac["dac_serial"]
            )
    raise NotFound(f"no DAC {dac_serial} recorded for {device_id}")


async def order_targets(store: Store, order_id: str) -> list[Target]:
    """The current DAC of every device of an order that has one (one LIST, one GET)."""
    if not ORDER_ID_RE.match(order_id):
        raise invalid("order", f"must be 1..64 of [A-Za-z0-9._-], got {order_id!r}")
    order = await objects.read_order_fields(store, order_id)
    if order is None:
        raise NotFound(f"no order {order_id}")
    profile = str(order.attestation_profile)
    images = await current_images(store, order_id)
    return [
        Target(profile, make_device_id(order_id, i), gen, serial)
        for i, (gen, serial) in sorted(images.items())
        if serial
    ]


async def revoke_all(store: Store, targets: list[Target], reason: str, by: str) -> list[Outcome]:
    """Revoke many DACs, a few at a time."""
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(t: Target) -> Outcome:
        async with sem:
            return await revoke(store, t, reason, by)

    return list(await asyncio.gather(*(one(t) for t in targets)))


async def revocations(store: Store, profile: str) -> list[Revocation]:
    """Every revocation of a profile's DACs, by serial."""
    found = await store.list_keys(keys.revocations_prefix(profile))
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(key: str) -> Revocation:
        async with sem:
            return Revocation.model_validate_json(await store.get(key))

    records = await asyncio.gather(*(one(k) for k in found if k.endswith(".json")))
    return sorted(records, key=lambda r: int(r.dac_serial, 16))


def crl_entries(records: list[Revocation]) -> list[RevokedDac]:
    """The CRL entries of some revocation records."""
    return [RevokedDac(r.dac_serial, r.at, r.reason) for r in records]


async def last_crl_number(store: Store, profile: str) -> int:
    """The highest CRL number taken for a profile (0: none yet)."""
    numbers = [
        int(k.rsplit("/", 1)[1].split(".")[0])
        for k in await store.list_keys(keys.crl_prefix(profile))
        if k.endswith(".json")
    ]
    return max(numbers, default=0)


async def issue_crl(
    store: Store,
    profile: str,
    build: Callable[[int, list[RevokedDac], datetime], bytes],
    next_update_days: int,
    by: str,
) -> tuple[bytes, CrlIssue]:
    """Take the next CRL number and build that CRL over every revocation listed now.

    `build(number, entries, this_update)` signs the CRL (it may be called again with a higher
    number if another writer took this one first). The CRL is stored beside its record.
    """
    entries = crl_entries(await revocations(store, profile))
    number = await last_crl_number(store, profile) + 1
    for _ in range(MAX_CRL_ATTEMPTS):
        now = datetime.now(UTC).replace(microsecond=0)
        der = build(number, entries, now)
        issue = CrlIssue(
            profile=profile,
            number=number,
            sha256=hashlib.sha256(der).hexdigest(),
            size=len(der),
            revoked=len(entries),
            next_update=now + timedelta(days=next_update_days),
            by=by,
            at=now,
        )
        if await store.put_if_absent(
            keys.crl_key(profile, number), issue.to_bytes(), "application/json"
        ):
            await store.put_once(keys.crl_key(profile, number, "der"), der, "application/pkix-crl")
            return der, issue
        number = await last_crl_number(store, profile) + 1
    raise IntegrityError(f"could not take a CRL number for {profile} in {MAX_CRL_ATTEMPTS} tries")
