"""Bad work orders through the live allocator: a `rejected` event naming field and rule, and
nothing of the order left in the bucket (no order.json, claim or allocation).

The decode-level cases (50+) are in tests/unit/test_bad_input.py; these are the ones only the
running allocator can judge (profile catalogue) or that once hurt it (a huge error list).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from matterfab.config import KafkaSettings
from matterfab.messages import ORDER_EVENTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.reliability.harness import (
    OwnPipeline,
    end_offsets,
    ensure_profile,
    order_events,
    rel_order,
    submit,
    wait_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

INSTANCE = 74
TRIVIAL = (
    "must not be one of the trivial passcodes (00000000, 11111111, ..., 99999999, "
    "12345678, 87654321)"
)


@pytest.fixture(scope="module")
def allocator(stack: LocalStack) -> Iterator[OwnPipeline]:
    """An allocator of our own (others of the group, if any, may take some orders: fine)."""
    ensure_profile(stack)
    own = OwnPipeline(stack)
    own.start("allocator", INSTANCE)
    try:
        yield own
    finally:
        own.stop_all()


def big_extras(order: dict[str, Any]) -> dict[str, Any]:
    order["partition"] = {"size": 0x3000}
    order["extra_entries"] = [
        {"namespace": "app", "key": f"blob{i}", "type": "string", "value": "x" * 3000}
        for i in range(3)
    ]
    return order


CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (
        "LIVE-BAD-PROFILE",
        rel_order("LIVE-BAD-PROFILE", 5, attestation_profile="no-such-profile"),
        {
            "attestation_profile": "unknown attestation profile 'no-such-profile' "
            "(not configured on the signer)"
        },
    ),
    (
        "LIVE-BAD-VID",
        rel_order("LIVE-BAD-VID", 5, product={"vendor_id": 0xFFF2, "product_id": 0x8000}),
        {"product.vendor_id": "must match the profile's PAI vendor ID 0xFFF1"},
    ),
    (
        "LIVE-BAD-MANY",
        rel_order("LIVE-BAD-MANY", 0, mfg_date="2026-02-30", attestation_profile="nope"),
        {
            "quantity": "must be greater than or equal to 1",
            "mfg_date": "must be YYYY-MM-DD or YYYYMMDD, optionally followed by an "
            "8-character vendor suffix (a real date)",
            "attestation_profile": "unknown attestation profile 'nope' "
            "(not configured on the signer)",
        },
    ),
    (
        "LIVE-BAD-SIZE",
        big_extras(rel_order("LIVE-BAD-SIZE", 300)),
        {"partition.size": "is too small: this device's data needs at least 0x5000 (20480) …"},
    ),
    (
        "LIVE-BAD-SERIALS",
        rel_order(
            "LIVE-BAD-SERIALS",
            3,
            devices=[{"serial_num": "DUP-1"}, {}, {"serial_num": "DUP-1"}],
        ),
        {"devices[2].serial_num": "duplicates the serial number of device 0"},
    ),
    (
        "LIVE-BAD-OVERRIDE",
        rel_order(
            "LIVE-BAD-OVERRIDE", 2, devices=[{"passcode": 12345678}, {"discriminator": 4096}]
        ),
        {
            "devices[0].passcode": TRIVIAL,
            "devices[1].discriminator": "must be in 0..4095 (12 bits), got 4096",
        },
    ),
    (
        # 20,000 bad rows: the rejected event must still fit in one Kafka message (it did not:
        # the allocator retried a 2.6 MB event forever and stopped taking orders).
        "LIVE-BAD-HUGE",
        rel_order("LIVE-BAD-HUGE", 20_000, devices=[{"passcode": 11111111}] * 20_000),
        {"devices[0].passcode": TRIVIAL, "$": "and 19950 more errors not listed"},
    ),
]


@pytest.mark.parametrize(("order_id", "order", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_live_allocator_rejects_with_field_and_rule(
    order_id: str,
    order: dict[str, Any],
    expected: dict[str, str],
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    allocator: OwnPipeline,
) -> None:
    since = await end_offsets(kafka_settings, ORDER_EVENTS)
    await submit(kafka_settings, order, order_id)
    final = await wait_final(kafka_settings, order_id, since, timeout=120)
    assert final.status == "rejected", final
    got = {e.field: e.message for e in final.errors}
    for field, message in expected.items():
        assert field in got, (field, got)
        if message.endswith("…"):
            assert got[field].startswith(message[:-1]), (field, got[field])
        else:
            assert got[field] == message, (field, got[field])
    assert len(json.dumps([e.model_dump() for e in final.errors])) < 64 * 1024
    # Nothing of a rejected order in the bucket: no order.json, claim or allocation.
    assert await store.list_keys(f"orders/{order_id}/") == []


async def test_allocator_still_accepts_after_the_bad_orders(
    kafka_settings: KafkaSettings, allocator: OwnPipeline
) -> None:
    since = await end_offsets(kafka_settings, ORDER_EVENTS)
    await submit(kafka_settings, rel_order("LIVE-GOOD-AFTER-BAD", 2), "LIVE-GOOD-AFTER-BAD")
    # Accepted is enough here (no signer/builder need run): the allocator is not stuck.
    for _ in range(60):
        events = await order_events(kafka_settings, "LIVE-GOOD-AFTER-BAD", since)
        if any(e.status == "accepted" for e in events):
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError("the allocator did not accept a good order after the bad ones")
