"""Bad work orders and bad messages: every one refused with the exact field and rule.

Decode level (no stack): `parse_submission` (what the allocator runs on mfg.work-orders) and
`codec.decode` (what every other service runs). The same orders through the live allocator
are in tests/reliability/test_bad_orders.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from matterfab import catalogue
from matterfab.errors import FieldError, InvalidInput
from matterfab.keywrap import KeyWrapper
from matterfab.lines import ensure_local_line
from matterfab.messages import ImageReady, LotAllocated, LotAttested, StationResult, WorkOrder
from matterfab.messages.codec import MAX_MESSAGE_BYTES, decode
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.allocator.order_book import OrderBook
from matterfab.services.allocator.service import Allocator, parse_submission

BASE: dict[str, Any] = {
    "type": "work-order/v1",
    "order_id": "WO-BAD-1",
    "product": {
        "vendor_id": 0xFFF1,
        "product_id": 0x8000,
        "vendor_name": "Acme",
        "product_name": "Bulb",
    },
    "quantity": 3,
    "mfg_date": "2026-11-21",
    "attestation_profile": "acme-a19",
    "commissioning": {"iteration_count": 1000},
}


def order(mutate: Callable[[dict[str, Any]], Any]) -> bytes:
    """BASE changed by `mutate`, as the bytes a producer would send."""
    data = copy.deepcopy(BASE)
    mutate(data)
    return json.dumps(data).encode()


def errors_of(raw: bytes) -> list[FieldError]:
    """The errors the allocator answers with (rejected event or dead letter alike)."""
    try:
        sub = parse_submission(raw)
    except InvalidInput as exc:  # no usable order_id: dead-lettered
        return exc.errors
    assert sub.errors, "accepted, expected a rejection"
    assert sub.errors or sub.order is None
    return sub.errors


def big_extras(d: dict[str, Any]) -> None:
    d["partition"] = {"size": 0x3000}
    d["extra_entries"] = [
        {"namespace": "app", "key": f"blob{i}", "type": "string", "value": "x" * 3000}
        for i in range(3)
    ]


def overrides(**per_index: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["devices"] = [per_index.get(f"d{i}", {}) for i in range(d["quantity"])]

    return mutate


def setter(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target = d
        for p in path[:-1]:
            target = target.setdefault(p, {})
        target[path[-1]] = value

    return mutate


def dropper(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target = d
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]

    return mutate


OVERSIZED = order(setter("product", "product_label", value="x" * MAX_MESSAGE_BYTES))

# (case id, raw bytes, expected field, expected exact message or a prefix ending in "…")
CASES: list[tuple[str, bytes, str, str]] = [
    ("malformed-json", b'{"type": "work-order/v1", "order_id": ', "$", "is not valid UTF-8 JSON…"),
    ("not-utf8", b'{"order_id": "\xff\xfe"}', "$", "is not valid UTF-8 JSON…"),
    ("json-array", b"[1, 2, 3]", "$", "must be a JSON object"),
    ("json-string", b'"work order"', "$", "must be a JSON object"),
    ("no-order-id", order(dropper("order_id")), "order_id", "is required: 1..64 of [A-Za-z0-9._-]"),
    ("bad-order-id", order(setter("order_id", value="a b/c")), "order_id", "is required: …"),
    ("order-id-65", order(setter("order_id", value="A" * 65)), "order_id", "is required: …"),
    (
        "unknown-type",
        order(setter("type", value="work-order/v2")),
        "type",
        "unknown message type 'work-order/v2'; expected 'work-order/v1'",
    ),
    ("missing-type", order(dropper("type")), "type", "is required (expected 'work-order/v1')"),
    ("quantity-string", order(setter("quantity", value="lots")), "quantity", "must be an integer"),
    (
        "quantity-numeric-string",
        order(setter("quantity", value="3")),
        "quantity",
        "must be an integer",
    ),
    ("quantity-bool", order(setter("quantity", value=True)), "quantity", "must be an integer"),
    ("quantity-float", order(setter("quantity", value=2.5)), "quantity", "must be an integer"),
    (
        "quantity-0",
        order(setter("quantity", value=0)),
        "quantity",
        "must be greater than or equal to 1",
    ),
    (
        "quantity-1000001",
        order(setter("quantity", value=1_000_001)),
        "quantity",
        "must be less than or equal to 1000000",
    ),
    ("missing-quantity", order(dropper("quantity")), "quantity", "is required"),
    ("missing-product", order(dropper("product")), "product", "is required"),
    ("product-not-object", order(setter("product", value=[1])), "product", "must be a JSON object"),
    (
        "vid-0",
        order(setter("product", "vendor_id", value=0)),
        "product.vendor_id",
        "must be greater than or equal to 1",
    ),
    (
        "vid-fff5",
        order(setter("product", "vendor_id", value=0xFFF5)),
        "product.vendor_id",
        "must be less than or equal to 65524",
    ),
    (
        "pid-0",
        order(setter("product", "product_id", value=0)),
        "product.product_id",
        "must be greater than or equal to 1",
    ),
    (
        "vendor-name-33",
        order(setter("product", "vendor_name", value="V" * 33)),
        "product.vendor_name",
        "must be at most 32 characters",
    ),
    (
        "product-url-257",
        order(setter("product", "product_url", value="h" * 257)),
        "product.product_url",
        "must be at most 256 characters",
    ),
    (
        "hw-version-string-empty",
        order(setter("product", "hardware_version_string", value="")),
        "product.hardware_version_string",
        "must not be empty",
    ),
    (
        "finish-unknown",
        order(setter("product", "product_finish", value="glitter")),
        "product.product_finish",
        "must be one of …",
    ),
    (
        "unknown-field",
        order(setter("colour", value="red")),
        "colour",
        "is not a known field",
    ),
    (
        "impossible-date",
        order(setter("mfg_date", value="2026-02-30")),
        "mfg_date",
        "must be YYYY-MM-DD or YYYYMMDD, optionally followed by an 8-character vendor suffix "
        "(a real date)",
    ),
    (
        "date-format",
        order(setter("mfg_date", value="21/11/2026")),
        "mfg_date",
        "must be YYYY-MM-DD or YYYYMMDD, optionally followed by an 8-character vendor suffix "
        "(a real date)",
    ),
    ("date-number", order(setter("mfg_date", value=20261121)), "mfg_date", "must be a string"),
    (
        "iterations-999",
        order(setter("commissioning", "iteration_count", value=999)),
        "commissioning.iteration_count",
        "must be greater than or equal to 1000",
    ),
    (
        "iterations-100001",
        order(setter("commissioning", "iteration_count", value=100_001)),
        "commissioning.iteration_count",
        "must be less than or equal to 100000",
    ),
    (
        "discovery-unknown",
        order(setter("commissioning", "discovery", value=["ble", "zigbee"])),
        "commissioning.discovery[1]",
        "must be one of 'ble', 'soft-ap', 'on-network', 'wifi-paf', 'nfc' or 'thread'",
    ),
    (
        "discovery-empty",
        order(setter("commissioning", "discovery", value=[])),
        "commissioning.discovery",
        "must not be empty",
    ),
    (
        "rotating-id-string",
        order(setter("commissioning", "rotating_device_id", value="yes")),
        "commissioning.rotating_device_id",
        "must be true or false",
    ),
    (
        "profile-bad-name",
        order(setter("attestation_profile", value="../etc")),
        "attestation_profile",
        "must match the pattern ^[A-Za-z0-9._-]+$",
    ),
    (
        "devices-wrong-length",
        order(setter("devices", value=[{}, {}])),
        "devices",
        "must have exactly quantity (3) items",
    ),
    (
        "override-trivial-passcode",
        order(overrides(d1={"passcode": 12345678})),
        "devices[1].passcode",
        "must not be one of the trivial passcodes (00000000, 11111111, ..., 99999999, "
        "12345678, 87654321)",
    ),
    (
        "override-passcode-range",
        order(overrides(d0={"passcode": 100_000_000})),
        "devices[0].passcode",
        "must be in 1..99999998, got 100000000",
    ),
    (
        "override-discriminator-4096",
        order(overrides(d2={"discriminator": 4096})),
        "devices[2].discriminator",
        "must be in 0..4095 (12 bits), got 4096",
    ),
    (
        "override-duplicate-serial",
        order(overrides(d0={"serial_num": "SN-1"}, d2={"serial_num": "SN-1"})),
        "devices[2].serial_num",
        "duplicates the serial number of device 0",
    ),
    (
        "override-serial-33",
        order(overrides(d0={"serial_num": "S" * 33})),
        "devices[0].serial_num",
        "must be at most 32 characters",
    ),
    (
        "override-uid-not-hex",
        order(overrides(d0={"rd_id_uid": "zz" * 16})),
        "devices[0].rd_id_uid",
        "must be hexadecimal",
    ),
    (
        "override-uid-duplicate",
        order(overrides(d0={"rd_id_uid": "ab" * 16}, d1={"rd_id_uid": "AB" * 16})),
        "devices[1].rd_id_uid",
        "duplicates the rd_id_uid of device 0",
    ),
    (
        "serial-pattern-too-long",
        order(setter("serial", value={"prefix": "P" * 30, "start": 1, "digits": 5})),
        "serial.prefix",
        "with the digits must be at most 32 characters",
    ),
    (
        "serial-digits-too-few",
        order(setter("serial", value={"prefix": "A-", "start": 98, "digits": 2})),
        "serial.digits",
        "is too small for the last serial number 100",
    ),
    (
        "extra-unknown-type",
        order(setter("extra_entries", value=[{"namespace": "app", "key": "k", "type": "float"}])),
        "extra_entries[0].type",
        "must be one of 'u8', 'i8', 'u16', 'u32', 'i32', 'u64', 'i64', 'string', 'hex2bin', "
        "'base64' or 'binary'",
    ),
    (
        "extra-key-16",
        order(
            setter(
                "extra_entries",
                value=[{"namespace": "app", "key": "k" * 16, "type": "u8", "value": 1}],
            )
        ),
        "extra_entries[0].key",
        "must be at most 15 characters",
    ),
    (
        "extra-u8-300",
        order(
            setter(
                "extra_entries",
                value=[{"namespace": "app", "key": "n", "type": "u8", "value": 300}],
            )
        ),
        "extra_entries[0].value",
        "must be in 0..255 for type u8",
    ),
    (
        "extra-hex-odd",
        order(
            setter(
                "extra_entries",
                value=[{"namespace": "app", "key": "h", "type": "hex2bin", "value": "abc"}],
            )
        ),
        "extra_entries[0].value",
        "must be hex digits, an even number of them",
    ),
    (
        "extra-shadows-factory-key",
        order(
            setter(
                "extra_entries",
                value=[
                    {
                        "namespace": "chip-factory",
                        "key": "serial-num",
                        "type": "string",
                        "value": "x",
                    }
                ],
            )
        ),
        "extra_entries[0].key",
        "duplicates key 'serial-num' in namespace 'chip-factory'",
    ),
    (
        "extra-per-device-missing",
        order(
            lambda d: (
                d.update(extra_entries=[{"namespace": "app", "key": "cal", "type": "i32"}]),
                overrides(d0={"extra": {"cal": 1}}, d1={"extra": {"cal": 2}})(d),
            )
        ),
        "devices[2].extra.cal",
        "is required by extra_entries",
    ),
    (
        "extra-per-device-bad-value",
        order(
            lambda d: (
                d.update(extra_entries=[{"namespace": "app", "key": "cal", "type": "u16"}]),
                overrides(
                    d0={"extra": {"cal": 1}}, d1={"extra": {"cal": 70000}}, d2={"extra": {"cal": 3}}
                )(d),
            )
        ),
        "devices[1].extra.cal",
        "must be in 0..65535 for type u16",
    ),
    (
        "partition-not-pages",
        order(setter("partition", value={"size": 0x3800})),
        "partition.size",
        "must be a multiple of 0x1000 (4096)",
    ),
    (
        "partition-too-small-for-data",
        order(big_extras),
        "partition.size",
        "is too small: this device's data needs at least 0x5000 (20480) bytes …",
    ),
    (
        "partition-encryption-unknown",
        order(setter("partition", value={"encryption": "aes"})),
        "partition.encryption",
        "must be one of 'none' or 'xts'",
    ),
    (
        "oversized",
        OVERSIZED,
        "$",
        f"message is {len(OVERSIZED)} bytes; the limit is {MAX_MESSAGE_BYTES}",
    ),
    (
        "dac-storage-unknown",
        order(setter("dac_storage", value="in-the-cloud")),
        "dac_storage",
        "must be one of 'factory-nvs', 'secure-cert', 'on-module' or 'device-key'",
    ),
    (
        "dac-storage-null",
        order(setter("dac_storage", value=None)),
        "dac_storage",
        "must be one of 'factory-nvs', 'secure-cert', 'on-module' or 'device-key'",
    ),
]


def matches(error: FieldError, field: str, message: str) -> bool:
    if error.field != field:
        return False
    if message.endswith("…"):
        return error.message.startswith(message[:-1])
    return error.message == message


@pytest.mark.parametrize(
    ("raw", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_work_order_refused_with_field_and_rule(raw: bytes, field: str, message: str) -> None:
    errors = errors_of(raw)
    assert any(matches(e, field, message) for e in errors), errors


def test_at_least_fifty_distinct_bad_orders() -> None:
    assert len(CASES) >= 50
    assert len({c[1] for c in CASES}) == len(CASES)


def test_every_error_is_reported_not_only_the_first() -> None:
    raw = order(
        lambda d: (
            d.update(quantity=0, mfg_date="2026-13-01"),
            d["product"].update(vendor_id=0, vendor_name="V" * 40),
        )
    )
    fields = {e.field for e in errors_of(raw)}
    assert fields >= {"quantity", "mfg_date", "product.vendor_id", "product.vendor_name"}


def test_twenty_thousand_bad_overrides_give_a_bounded_error_list() -> None:
    raw = order(lambda d: d.update(quantity=20_000, devices=[{"passcode": 11111111}] * 20_000))
    errors = errors_of(raw)
    assert len(errors) == 51  # fits in one rejected event, whatever the order's size
    assert errors[-1] == FieldError("$", "and 19950 more errors not listed")
    assert errors[0] == FieldError(
        "devices[0].passcode",
        "must not be one of the trivial passcodes (00000000, 11111111, ..., 99999999, "
        "12345678, 87654321)",
    )


def test_the_base_order_is_valid() -> None:
    # Guards the cases above: each fails for its own reason, not because BASE is broken.
    sub = parse_submission(json.dumps(BASE).encode())
    assert sub.errors == [] and sub.order is not None


def test_partition_size_check_counts_extras_like_the_builder() -> None:
    def bigger(d: dict[str, Any]) -> None:
        big_extras(d)
        d["partition"] = {"size": 0x5000}

    fits = order(bigger)
    assert parse_submission(fits).errors == []


# ---- the attestation profile must suit the order's dac_storage (allocator's catalogue check)


@pytest.mark.parametrize(
    ("dac_storage", "issues_dacs", "accepted"),
    [
        ("factory-nvs", False, False),
        ("secure-cert", False, False),
        ("on-module", False, True),
        ("on-module", True, True),  # a profile that could issue DACs is fine: none are issued
        ("secure-cert", True, True),
    ],
)
async def test_cd_only_profile_serves_only_on_module_orders(
    dac_storage: str, issues_dacs: bool, accepted: bool, tmp_path: Path
) -> None:
    store = MemoryObjectStore()
    await ensure_local_line(store, tmp_path)  # as `matterfab up` does: line local, its key
    summary = {"name": "acme-a19", "vendor_id": 0xFFF1, "product_id": 0x8000}
    await catalogue.publish(store, {**summary, "issues_dacs": issues_dacs})
    sent: list[Any] = []

    async def send(emits: Any) -> None:
        sent.extend(emits)

    allocator = Allocator(OrderBook(store, KeyWrapper(b"k" * 32)), send)
    sub = parse_submission(order(setter("dac_storage", value=dac_storage)))
    assert sub.errors == [] and sub.order is not None
    before = dict(store.objects)
    events = [e.message for e in [*await allocator.handle(sub), *sent]]
    if accepted:
        assert events[0].status == "accepted"
        return
    assert [e.status for e in events] == ["rejected"]
    assert [(e.field, e.message) for e in events[0].errors] == [
        (
            "attestation_profile",
            "profile 'acme-a19' is CD-only (issues no DACs): it serves only dac_storage "
            f"on-module orders, not {dac_storage}",
        )
    ]
    assert store.objects == before  # nothing accepted, nothing written


# ---- the other topics: codec.decode


# A lot of one device on mfg.devices.allocated: what the signer decodes.
LOT: dict[str, Any] = {
    "type": "lot-allocated/v1",
    "order_id": "WO-1",
    "lot_id": "WO-1/0000000",
    "quantity": 1,
    "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
    "mfg_date": "2026-11-21",
    "attestation_profile": "p",
    "iteration_count": 1000,
    "flow": "standard",
    "discovery": ["ble"],
    "partition_size": 0x6000,
    "devices": [
        {
            "index": 0,
            "serial_num": "S1",
            "discriminator": 1,
            "passcode": 20202021,
            "salt_b64": "AAAAAAAAAAAAAAAAAAAAAA==",
        }
    ],
}


def lot_with(**device: Any) -> bytes:
    """LOT with its device's fields replaced."""
    return json.dumps({**LOT, "devices": [{**LOT["devices"][0], **device}]}).encode()


DECODE_CASES: list[tuple[str, type, bytes, str, str]] = [
    ("garbage", LotAllocated, b"\x00\x01garbage", "$", "is not valid UTF-8 JSON…"),
    ("array", LotAttested, b"[]", "$", "must be a JSON object"),
    (
        "no-type",
        ImageReady,
        b'{"order_id": "x"}',
        "type",
        "is required (expected 'image-ready/v1')",
    ),
    (
        "other-topic-type",
        LotAttested,
        json.dumps(LOT).encode(),
        "type",
        "unknown message type 'lot-allocated/v1'; expected 'lot-attested/v1'",
    ),
    (
        "wrong-shape",
        StationResult,
        b'{"type": "station-result/v1", "order_id": "x"}',
        "device_id",
        "is required",
    ),
    (
        "passcode-0",
        LotAllocated,
        lot_with(passcode=0),
        "devices[0].passcode",
        "must be greater than or equal to 1",
    ),
    (
        "discriminator-4096",
        LotAllocated,
        lot_with(discriminator=4096),
        "devices[0].discriminator",
        "must be less than or equal to 4095",
    ),
    (
        "extra-field",
        LotAllocated,
        lot_with(dac_key="00"),
        "devices[0].dac_key",
        "is not a known field",
    ),
    (
        "empty-lot",
        LotAllocated,
        json.dumps({**LOT, "devices": []}).encode(),
        "devices",
        "must not be empty",
    ),
    (
        "oversized",
        LotAllocated,
        b" " * (MAX_MESSAGE_BYTES + 1),
        "$",
        f"message is {MAX_MESSAGE_BYTES + 1} bytes; the limit is {MAX_MESSAGE_BYTES}",
    ),
]


@pytest.mark.parametrize(
    ("model", "raw", "field", "message"),
    [c[1:] for c in DECODE_CASES],
    ids=[c[0] for c in DECODE_CASES],
)
def test_message_refused_with_field_and_rule(
    model: type, raw: bytes, field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        decode(raw, model)
    assert any(matches(e, field, message) for e in info.value.errors), info.value.errors


def test_the_base_lot_message_is_valid() -> None:
    (device,) = decode(json.dumps(LOT).encode(), LotAllocated).identities()
    assert (device.device_id, device.passcode) == ("WO-1/0000000", 20202021)


def test_work_order_decode_matches_the_allocator() -> None:
    with pytest.raises(InvalidInput) as info:
        decode(order(setter("quantity", value="3")), WorkOrder)
    assert info.value.errors == [FieldError("quantity", "must be an integer")]


# ---- a message too big to emit must not stall a service


class _FakeProducer:
    """Refuses messages over `limit` bytes like aiokafka does (at send), accepts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        from aiokafka.errors import MessageSizeTooLargeError

        if len(value) > self.limit:
            raise MessageSizeTooLargeError("too large")
        self.sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_an_oversized_emit_is_dead_lettered_not_retried_forever() -> None:
    from matterfab.config import KafkaSettings
    from matterfab.messages import DEAD_LETTER, ORDER_EVENTS, ErrorItem, OrderEvent
    from matterfab.runtime import Emit, Publisher

    publisher = Publisher("allocator", KafkaSettings(bootstrap="127.0.0.1:1"))
    producer = _FakeProducer(limit=100_000)
    publisher.producer = producer  # type: ignore[assignment]
    huge = OrderEvent(
        order_id="WO-HUGE",
        status="rejected",
        errors=[ErrorItem(field=f"devices[{i}].passcode", message="x" * 100) for i in range(2000)],
    )
    small = OrderEvent(order_id="WO-OK", status="accepted")
    await asyncio.wait_for(
        publisher.send([Emit(ORDER_EVENTS, "WO-HUGE", huge), Emit(ORDER_EVENTS, "WO-OK", small)]),
        5,
    )
    topics = [t for t, _ in producer.sent]
    assert topics == [DEAD_LETTER, ORDER_EVENTS]
    letter = json.loads(producer.sent[0][1])
    assert letter["reason"] == "too_large" and letter["key"] == "WO-HUGE"
    assert letter["errors"][0]["field"] == "$"
