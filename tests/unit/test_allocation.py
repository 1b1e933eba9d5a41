"""Pure allocation: serial patterns and counters, discriminator spread, overrides, extras, and
how a stored chunk is cut into lot messages."""

from __future__ import annotations

from typing import Any

from matterfab import lots
from matterfab.matter import identity
from matterfab.messages import WorkOrder
from matterfab.services.allocator import allocation


def order(**kw: Any) -> WorkOrder:
    base: dict[str, Any] = {
        "order_id": "T-1",
        "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
        "quantity": 5,
        "mfg_date": "2026-11-21",
        "attestation_profile": "p",
    }
    base.update(kw)
    return WorkOrder.model_validate(base)


CLAIM = allocation.Claim("T-1", serial_start=41, serial_count=5, discriminator_start=4094)


def test_counter_serials_and_wrapping_discriminators() -> None:
    devs = allocation.allocate_chunk(order(), CLAIM, 0)
    assert [d["serial_num"] for d in devs] == [f"FFF18000{n:08d}" for n in range(41, 46)]
    assert [d["discriminator"] for d in devs] == [4094, 4095, 0, 1, 2]
    for d in devs:
        identity.validate_passcode(d["passcode"])
    assert len({d["salt_b64"] for d in devs}) == 5
    assert all(d["rd_id_uid"] is None for d in devs)


def test_pattern_overrides_and_rotating_ids() -> None:
    o = order(
        serial={"prefix": "SN-", "start": 7, "digits": 4},
        commissioning={"rotating_device_id": True},
        devices=[{}, {"serial_num": "X1", "passcode": 20202021, "discriminator": 3840}, {}, {}, {}],
    )
    devs = allocation.allocate_chunk(o, CLAIM, 0)
    assert [d["serial_num"] for d in devs] == ["SN-0007", "X1", "SN-0009", "SN-0010", "SN-0011"]
    assert (devs[1]["passcode"], devs[1]["discriminator"]) == (20202021, 3840)
    uids = [d["rd_id_uid"] for d in devs]
    assert len(set(uids)) == 5 and all(len(bytes.fromhex(u)) == 16 for u in uids)
    assert allocation.counter_serials_needed(o) == 0


def test_counter_is_only_used_by_devices_without_a_serial() -> None:
    o = order(devices=[{"serial_num": "A"}, {}, {"serial_num": "B"}, {}, {}])
    assert allocation.counter_serials_needed(o) == 3
    devs = allocation.allocate_chunk(o, CLAIM, 0)
    assert [d["serial_num"] for d in devs] == [
        "A",
        "FFF1800000000041",
        "B",
        "FFF1800000000042",
        "FFF1800000000043",
    ]


def test_chunks_continue_the_counter() -> None:
    o = order(quantity=allocation.CHUNK + 3)
    second = allocation.allocate_chunk(o, CLAIM, 1)
    assert [d["index"] for d in second] == [
        allocation.CHUNK,
        allocation.CHUNK + 1,
        allocation.CHUNK + 2,
    ]
    assert second[0]["serial_num"] == f"FFF18000{41 + allocation.CHUNK:08d}"


def test_lot_message_resolves_extras() -> None:
    o = order(
        quantity=2,
        extra_entries=[
            {"namespace": "app", "key": "region", "type": "string", "value": "EU"},
            {"namespace": "app", "key": "cal", "type": "i32"},
        ],
        devices=[{"extra": {"cal": -3}}, {"extra": {"cal": 4}}],
    )
    devs = allocation.allocate_chunk(o, CLAIM, 0)
    (lot,) = allocation.lot_messages(o, 0, devs, 64)
    assert lot.lot_id == "T-1/0000000"
    msg = list(lot.identities())[1]
    assert msg.device_id == "T-1/0000001"
    assert [(e.key, e.value) for e in msg.extra] == [("region", "EU"), ("cal", 4)]
    assert msg.iteration_count == 10000 and msg.discovery == ["ble"]
    assert (msg.serial_num, msg.passcode, msg.salt_b64) == (
        devs[1]["serial_num"],
        devs[1]["passcode"],
        devs[1]["salt_b64"],
    )


def test_lots_cut_each_chunk_from_its_start_and_never_straddle_two() -> None:
    o = order(quantity=allocation.CHUNK + 30)
    size = 21
    first = allocation.lot_messages(o, 0, allocation.allocate_chunk(o, CLAIM, 0), size)
    second = allocation.lot_messages(o, 1, allocation.allocate_chunk(o, CLAIM, 1), size)
    cuts = [[d.index for d in lot.devices] for lot in [*first, *second]]
    assert [i for lot in cuts for i in lot] == list(range(allocation.CHUNK + 30))
    assert all(len(lot) == size for lot in cuts[:47]) and cuts[47] == list(range(987, 1000))
    assert cuts[48:] == [list(range(1000, 1021)), list(range(1021, 1030))]
    assert [lot.lot_id for lot in second] == ["T-1/0001000", "T-1/0001021"]
    # Only the lots holding these devices, whole.
    only = allocation.lot_messages(
        o, 0, allocation.allocate_chunk(o, CLAIM, 0), size, only=[22, 999]
    )
    assert [lot.lot_id for lot in only] == ["T-1/0000021", "T-1/0000987"]


def test_a_claims_lot_size_is_kept_and_a_claim_from_before_lots_takes_the_default() -> None:
    claim = allocation.Claim("T-1", 41, 5, 4094, lot_size=7)
    assert allocation.Claim.from_json(claim.to_json()) == claim
    assert claim.lot_size_of(order()) == 7
    old = {k: v for k, v in claim.to_json().items() if k != "lot_size"}
    assert allocation.Claim.from_json(old).lot_size is None
    assert allocation.Claim.from_json(old).lot_size_of(order()) == lots.lot_size(10_000)
    assert "lot_size" not in CLAIM.to_json()
