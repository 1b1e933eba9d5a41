"""The identity registry: canonical serial ranges against brute-force sets, and the claim chain.

The chain tests run the real `ClaimChains` on the in-memory bucket (write-once semantics);
the real-stack race is in tests/integration/test_registry.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matterfab.messages import WorkOrder
from matterfab.messages.codec import encode
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.allocator import allocation, identity_registry
from matterfab.services.allocator.claim_chain import ClaimChains, OrderConflict
from matterfab.services.allocator.identity_registry import IdentityRegistry, OrderIdentities, Run
from matterfab.services.allocator.order_book import order_reader

# ---- canonical forms


@given(st.text(alphabet="AB-0123456789", max_size=12))
def test_canonical_is_a_bijection(serial: str) -> None:
    head, digits, n = identity_registry.canonical(serial)
    assert identity_registry.fmt(head, digits, n) == serial
    assert not head.endswith(tuple(identity_registry.DIGITS))


@given(
    st.sampled_from(["", "SC-", "SC1", "A0", "9", "X09"]),
    st.integers(0, 2000),
    st.integers(1, 300),
    st.integers(1, 4),
)
def test_pattern_runs_hold_exactly_the_pattern_serials(
    prefix: str, start: int, count: int, digits: int
) -> None:
    want = {f"{prefix}{n:0{digits}d}" for n in range(start, start + count)}
    got = set()
    for run, first_n in identity_registry.pattern_runs(prefix, start, start + count - 1, digits):
        for k, n in enumerate(range(run.lo, run.hi + 1)):
            serial = run.serial(n)
            assert serial == f"{prefix}{first_n + k:0{digits}d}"
            got.add(serial)
    assert got == want


def test_same_string_same_serial_across_prefix_and_digits() -> None:
    # "SC-0003" from a pattern equals "SC-0003" listed explicitly; "SC-003" is another serial.
    ((run, _),) = identity_registry.pattern_runs("SC-", 1, 4, 4)
    assert run == Run("SC-", 4, 1, 4)
    assert identity_registry.canonical("SC-0003") == ("SC-", 4, 3)
    assert identity_registry.canonical("SC-003") == ("SC-", 3, 3)
    ((joined, _),) = identity_registry.pattern_runs("SC0", 5, 7, 2)  # SC005..SC007
    assert joined == Run("SC", 3, 5, 7)
    assert identity_registry.explicit_runs(["SC005", "SC-0003", "SC006", "SC-0001"]) == [
        Run("SC", 3, 5, 6),
        Run("SC-", 4, 1, 1),
        Run("SC-", 4, 3, 3),
    ]


# ---- orders against a registry, checked against brute force

ALPHABET = ["SC-", "SC1", "", "A0"]


def make_order(order_id: str, **kw: Any) -> WorkOrder:
    base: dict[str, Any] = {
        "order_id": order_id,
        "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
        "quantity": 1,
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
    }
    base.update(kw)
    return WorkOrder.model_validate(base)


@st.composite
def orders(draw: st.DrawFn, order_id: str) -> WorkOrder:
    """A pattern order (maybe with some explicit serials) or an explicit-list order."""
    digits = draw(st.integers(2, 3))
    prefix = draw(st.sampled_from(ALPHABET))
    count = draw(st.integers(1, 25))
    start = draw(st.integers(0, 10**digits - count))
    explicit = st.builds(
        lambda p, d, n: f"{p}{n:0{d}d}",
        st.sampled_from(ALPHABET),
        st.integers(2, 3),
        st.integers(0, 99),
    )
    if draw(st.booleans()):
        devices = draw(st.lists(st.one_of(st.none(), explicit), min_size=count, max_size=count))
        kw: dict[str, Any] = {
            "serial": {"prefix": prefix, "start": start, "digits": digits},
            "devices": [{"serial_num": s} if s else {} for s in devices],
        }
    else:
        serials = draw(st.lists(explicit, min_size=count, max_size=count, unique=True))
        kw = {"devices": [{"serial_num": s} for s in serials]}
    order = make_order(order_id, quantity=count, **kw)
    if order.cross_field_errors():  # a pattern value also listed explicitly: not this test's
        return make_order(
            order_id,
            quantity=count,
            devices=kw["devices"] and [{"serial_num": f"{order_id}-{i}"} for i in range(count)],
        )
    return order


def serials_of(order: WorkOrder) -> set[str]:
    return {s for i in range(order.quantity) if (s := order.serial_for(i)) is not None}


def reported(errors: list[Any]) -> list[tuple[str, str]]:
    """(first serial, holder) of every conflict message."""
    out = []
    for e in errors:
        values, holder = e.message.split(" already used by order ")
        out.append((values.split("..")[0], holder))
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_conflicts_match_brute_force(data: st.DataObject) -> None:
    reg = IdentityRegistry()
    held: dict[str, str] = {}  # serial -> order_id, the brute-force registry
    for k in range(6):
        order_id = f"O{k}"
        order = data.draw(orders(order_id))
        ids = OrderIdentities.of(order)
        mine = serials_of(order)
        clash = {s: held[s] for s in mine if s in held}
        errors = identity_registry.conflicts(reg, order, ids)
        assert bool(errors) == bool(clash), (errors, clash)
        for first, holder in reported(errors):
            assert clash[first] == holder
        if errors:
            # Every clash is reported (few enough here) by a message covering it.
            assert min(clash) in {f for f, _ in reported(errors)} or any(
                e.field == "serial" for e in errors
            )
            continue
        claim = ids.held(order_id, [])
        covered = {r.serial(n) for r in claim.serials for n in range(r.lo, r.hi + 1)}
        assert covered == mine
        reg.add(claim)
        held.update(dict.fromkeys(mine, order_id))


def test_pattern_conflict_message_names_range_and_holder() -> None:
    reg = IdentityRegistry()
    a = make_order("HB-SER-A", quantity=4, serial={"prefix": "SC-", "start": 1, "digits": 4})
    reg.add(OrderIdentities.of(a).held(a.order_id, []))
    b = make_order("HB-SER-B", quantity=4, serial={"prefix": "SC-", "start": 3, "digits": 4})
    errors = identity_registry.conflicts(reg, b, OrderIdentities.of(b))
    assert [str(e) for e in errors] == ["serial: SC-0003..SC-0004 already used by order HB-SER-A"]
    c = make_order(
        "HB-SER-C",
        quantity=3,
        devices=[{"serial_num": "X-1"}, {"serial_num": "SC-0003"}, {"serial_num": "SC-9"}],
    )
    errors = identity_registry.conflicts(reg, c, OrderIdentities.of(c))
    assert [str(e) for e in errors] == [
        "devices[1].serial_num: SC-0003 already used by order HB-SER-A"
    ]


def test_a_million_device_pattern_is_one_run() -> None:
    o = make_order("BIG", quantity=1_000_000, serial={"prefix": "SN", "start": 0, "digits": 7})
    claim = OrderIdentities.of(o).held("BIG", [])
    assert claim.serials == (Run("SN", 7, 0, 999_999),)


# ---- the chain in a bucket


class MemoryStore(MemoryObjectStore):
    """The in-memory bucket, yielding at every request as a network store does, so that
    racing allocators interleave."""

    async def put_if_absent(self, *args: Any, **kw: Any) -> bool:
        await asyncio.sleep(0)
        return await super().put_if_absent(*args, **kw)

    async def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        await asyncio.sleep(0)
        return await super().get_with_metadata(key)


def sha(order: WorkOrder) -> str:
    return hashlib.sha256(encode(order)).hexdigest()


async def claim(claims: ClaimChains, order: WorkOrder) -> dict[str, Any]:
    return await claims.claim(order, sha(order))


def claims_on(store: MemoryStore) -> ClaimChains:
    return ClaimChains(store, order_reader(store))  # type: ignore[arg-type,unused-ignore]


async def test_rejected_order_writes_nothing_and_resubmission_is_idempotent() -> None:
    store = MemoryStore()
    claims = claims_on(store)
    a = make_order("A", quantity=4, serial={"prefix": "SC-", "start": 1, "digits": 4})
    first = await claim(claims, a)
    assert await claim(claims, a) == first  # same order again: its record, no new one
    before = dict(store.objects)
    b = make_order("B", quantity=4, serial={"prefix": "SC-", "start": 3, "digits": 4})
    with pytest.raises(OrderConflict) as exc:
        await claim(claims, b)
    assert [str(e) for e in exc.value.errors] == [
        "serial: SC-0003..SC-0004 already used by order A"
    ]
    assert store.objects == before
    # Corrected, under the same order_id: accepted.
    fixed = make_order("B", quantity=4, serial={"prefix": "SC-", "start": 5, "digits": 4})
    assert (await claim(claims, fixed))["order_id"] == "B"
    # The order_id with other content again: refused.
    with pytest.raises(OrderConflict) as exc:
        await claim(claims, make_order("B", quantity=1))
    assert [e.field for e in exc.value.errors] == ["order_id"]
    # A fresh process (restart) sees the same history.
    with pytest.raises(OrderConflict):
        await claim(
            claims_on(store), make_order("C", quantity=1, devices=[{"serial_num": "SC-0008"}])
        )


async def test_unique_ids_are_claimed_per_product() -> None:
    claims = claims_on(MemoryStore())
    uid = "ab" * 16
    await claim(claims, make_order("U1", devices=[{"rd_id_uid": uid}]))
    with pytest.raises(OrderConflict) as exc:
        await claim(claims, make_order("U2", quantity=2, devices=[{}, {"rd_id_uid": uid.upper()}]))
    assert [str(e) for e in exc.value.errors] == [
        f"devices[1].rd_id_uid: {uid} already used by order U1"
    ]
    other = make_order(
        "U3", product={"vendor_id": 0xFFF1, "product_id": 0x8001}, devices=[{"rd_id_uid": uid}]
    )
    await claim(claims, other)  # another product: its own registry


async def test_counter_steps_over_serials_other_orders_hold() -> None:
    claims = claims_on(MemoryStore())
    held = [allocation.counter_serial(0xFFF1, 0x8000, n) for n in (2, 5)]
    await claim(claims, make_order("E", quantity=2, devices=[{"serial_num": s} for s in held]))
    record = await claim(claims, make_order("C1", quantity=3))
    assert (record["serial_start"], record["serial_count"]) == (6, 3)
    record = await claim(claims, make_order("C2", quantity=2))
    assert record["serial_start"] == 9


async def test_racing_allocators_exactly_one_wins() -> None:
    store = MemoryStore()
    a = make_order("RA", quantity=50, serial={"prefix": "R", "start": 0, "digits": 3})
    b = make_order("RB", quantity=50, serial={"prefix": "R", "start": 40, "digits": 3})
    results = await asyncio.gather(
        claim(claims_on(store), a), claim(claims_on(store), b), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, OrderConflict)]
    assert len(won) == 1 and len(lost) == 1
    assert len([k for k in store.objects if "/claims/" in k]) == 1


def test_allocation_bench_measures_both_claims() -> None:
    from bench import allocation as bench_allocation

    result = bench_allocation.measure(devices=1500, prior=6, rounds=1)
    assert result["registry_objects_per_order"] == 1
    assert result["before_s"] > 0 and result["after_s"] > 0


async def test_records_older_than_the_registry_hold_their_orders_serials() -> None:
    """A pattern order accepted before the registry (counter-only record) still blocks."""
    store = MemoryStore()
    old = make_order("OLD", quantity=4, serial={"prefix": "SC-", "start": 1, "digits": 4})
    legacy = {
        "order_id": "OLD",
        "serial_start": 1,
        "serial_count": 0,
        "discriminator_start": 0,
        "devices": 4,
    }
    prefix = "state/products/FFF1-8000/claims/"
    await store.put_once(f"{prefix}0000000001.json", json.dumps(legacy).encode())
    await store.put_once("orders/OLD/order.json", encode(old))
    with pytest.raises(OrderConflict) as exc:
        await claim(claims_on(store), make_order("NEW", devices=[{"serial_num": "SC-0002"}]))
    assert [str(e) for e in exc.value.errors] == [
        "devices[0].serial_num: SC-0002 already used by order OLD"
    ]
    record = await claim(claims_on(store), make_order("NEW2", quantity=2))
    assert (record["serial_start"], record["discriminator_start"]) == (1, 4)
