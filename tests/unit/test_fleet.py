"""The fleet records (device index, revocations, CRL numbers, scrap) on the in-memory store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from matterfab.errors import InvalidInput
from matterfab.fleet import index, keys, revocations, scrap
from matterfab.fleet.index import NotFound
from matterfab.fleet.records import DeviceImage
from matterfab.matter import payload
from matterfab.messages import StationResult
from matterfab.messages.base import device_id, order_key
from matterfab.messages.station import station_record_key
from matterfab.objectstore import MemoryObjectStore

VID, PID, ORDER, PROFILE = 0xFFF1, 0x8000, "WO-F", "prof"


def _image(i: int, dac_serial: str, generation: int = 0) -> DeviceImage:
    p = payload.SetupPayload(
        vendor_id=VID, product_id=PID, flow=payload.CommissioningFlow.STANDARD,
        discovery=payload.Discovery.BLE, discriminator=100 + i, passcode=20202021 + i,
    )  # fmt: skip
    return DeviceImage(
        device_id=device_id(ORDER, i), order_id=ORDER, index=i, generation=generation,
        serial_num=f"SN-{i:04d}", vendor_id=VID, product_id=PID, discriminator=100 + i,
        qr_payload=payload.encode_qr(p), manual_code=payload.encode_manual(p),
        dac_serial=dac_serial,
    )  # fmt: skip


async def _fleet(n: int = 3) -> MemoryObjectStore:
    store = MemoryObjectStore()
    order = {"order_id": ORDER, "quantity": n, "attestation_profile": PROFILE}
    await store.put_once(order_key(ORDER, "order.json"), json.dumps(order).encode())
    for i in range(n):
        await index.record_image(store, _image(i, f"{0xA0 + i:02x}" * 10))
    return store


def test_find_by_every_key() -> None:
    async def run() -> None:
        store = await _fleet()
        img = _image(1, "a1" * 10)
        rec = StationResult(order_id=ORDER, device_id=img.device_id, index=1,
                            serial_num=img.serial_num, station_id="st1", line="L",
                            status="flashed", mac="02:00:00:00:00:01")  # fmt: skip
        await store.put_once(station_record_key(ORDER, 1), rec.model_dump_json().encode())
        await store.put_once(keys.mac_key(rec.mac or ""), json.dumps(
            {"mac": rec.mac, "device_id": rec.device_id}).encode())  # fmt: skip
        assert await index.resolve_serial(store, "SN-0001") == [img.device_id]
        assert await index.resolve(store, "qr", img.qr_payload) == img.device_id
        assert await index.resolve(store, "dac_serial", "0x" + "A1" * 10) == img.device_id
        assert await index.resolve(store, "mac", "02-00-00-00-00-01") == img.device_id
        view = await index.device_view(store, img.device_id)
        assert view.state == "bound" and view.to_json()["station_id"] == "st1"
        assert (await index.device_view(store, device_id(ORDER, 0))).state == "built"
        for kind, value in [("qr", _image(9, "").qr_payload), ("dac_serial", "ff"),
                            ("mac", "02:00:00:00:00:09")]:  # fmt: skip
            with pytest.raises(NotFound):
                await index.resolve(store, kind, value)
        with pytest.raises(NotFound):
            await index.device_view(store, device_id(ORDER, 3))  # beyond the quantity
        with pytest.raises(InvalidInput, match="device"):
            index.split_device_id("WO-F/12")

    asyncio.run(run())


def test_revoke_is_idempotent_and_50_concurrent_lose_none() -> None:
    async def run() -> None:
        store = await _fleet(50)
        targets = await revocations.order_targets(store, ORDER)
        assert len(targets) == 50
        outcomes = await asyncio.gather(
            *(revocations.revoke(store, t, "keyCompromise", f"op{n}") for n, t in
              enumerate(targets))
        )  # fmt: skip
        assert all(o.created for o in outcomes)
        again = await revocations.revoke(store, targets[0], "superseded", "other")
        assert not again.created and again.record.reason == "keyCompromise"
        listed = await revocations.revocations(store, PROFILE)
        assert {r.dac_serial for r in listed} == {t.dac_serial for t in targets}
        view = await index.device_view(store, targets[3].device_id)
        assert view.state == "revoked"

    asyncio.run(run())


def test_crl_numbers_only_grow_under_races() -> None:
    async def run() -> None:
        store = await _fleet(1)

        def build(number: int, entries: list, now: datetime) -> bytes:
            return f"crl {number} {len(entries)}".encode()

        issued = await asyncio.gather(
            *(revocations.issue_crl(store, PROFILE, build, 30, "op") for _ in range(10))
        )
        assert sorted(i.number for _, i in issued) == list(range(1, 11))
        assert await revocations.last_crl_number(store, PROFILE) == 10

    asyncio.run(run())


def test_scrap_revokes_and_is_idempotent() -> None:
    async def run() -> None:
        store = await _fleet(2)
        dev = device_id(ORDER, 0)
        done = await scrap.scrap(store, dev, "failed EOL RF test", "st1", station_id="st1")
        assert done.created and done.revocation is not None
        assert done.revocation.record.reason == "cessationOfOperation"
        again = await scrap.scrap(store, dev, "other", "st2")
        assert not again.created and again.record.reason == "failed EOL RF test"
        view = await index.device_view(store, dev)
        assert view.state == "scrapped" and view.dacs[0]["revoked"] is not None
        with pytest.raises(InvalidInput, match="reason"):
            await scrap.scrap(store, dev, " ", "x")
        rows = (await store.get(f"orders/{ORDER}/bindings-scrapped.csv")).decode().splitlines()
        assert rows[0] == "device_id,serial_num,station_id,reason,by,at"
        assert rows[1].startswith(f"{dev},SN-0000,st1,failed EOL RF test,st1,") and len(rows) == 2

    asyncio.run(run())


def test_state_precedence() -> None:
    img = _image(0, "aa")
    st = StationResult(
        order_id=ORDER, device_id=img.device_id, index=0, serial_num="s",
        station_id="s", line="L", status="flashed", at=datetime.now(UTC),
    )  # fmt: skip
    assert index.derive_state(None, False, None, False) == "allocated"
    assert index.derive_state(img, False, None, False) == "built"
    assert index.derive_state(img, False, st, False) == "flashed"
    assert index.derive_state(img, True, st, False) == "revoked"
    assert index.derive_state(_image(0, "bb", 1), False, st, False) == "reissued"
    assert index.derive_state(img, True, st, True) == "scrapped"


def test_order_counts_and_the_monitor_board() -> None:
    from matterfab.messages import OrderEvent
    from matterfab.services.monitor.board import OrderBoard

    async def run() -> dict[str, int]:
        store = await _fleet(4)
        await scrap.scrap(store, device_id(ORDER, 0), "EOL", "st1")
        target = await revocations.device_target(store, device_id(ORDER, 1))
        await revocations.revoke(store, target, "keyCompromise", "op")
        return await index.order_counts(store, ORDER)

    counts = asyncio.run(run())
    assert counts == {"scrapped": 1, "revoked": 2, "quantity": 4, "ready": 0}
    board = OrderBoard()
    board.apply(OrderEvent(order_id=ORDER, status="completed", ready=4, quantity=4))
    board.apply(OrderEvent(order_id=ORDER, status="progress", flashed=4, bound=3, quantity=4))
    board.apply(OrderEvent(order_id=ORDER, status="progress", **counts))
    view = board.get(ORDER)
    assert view is not None and view.status == "completed"
    got = view.as_dict()
    assert (got["flashed"], got["bound"], got["scrapped"], got["revoked"]) == (4, 3, 1, 2)


def test_device_key_reissue_grants_one_more_certification() -> None:
    from matterfab.fleet import reissue

    async def run() -> None:
        store = MemoryObjectStore()
        order = {"order_id": ORDER, "quantity": 2, "attestation_profile": PROFILE,
                 "dac_storage": "device-key"}  # fmt: skip
        await store.put_once(order_key(ORDER, "order.json"), json.dumps(order).encode())
        await index.record_image(store, _image(0, "c0" * 10))
        assert await reissue.certify_generation(store, ORDER, 0) is None
        done = await reissue.reissue(store, device_id(ORDER, 0), "op")
        assert done.grant is not None and done.grant.generation == 1 and done.image is None
        assert [o.record.reason for o in done.revoked] == ["superseded"]
        assert await reissue.certify_generation(store, ORDER, 0) == 1
        view = await index.device_view(store, device_id(ORDER, 0))
        assert view.state == "revoked" and view.certify_grants == [1]
        # The device-key signer certifies the next CSR as generation 1: the grant is used up.
        await index.record_image(store, _image(0, "c1" * 10, generation=1))
        assert await reissue.certify_generation(store, ORDER, 0) is None
        assert (await index.device_view(store, device_id(ORDER, 0))).state == "reissued"
        await scrap.scrap(store, device_id(ORDER, 0), "broken", "op")
        with pytest.raises(InvalidInput, match="scrapped"):
            await reissue.reissue(store, device_id(ORDER, 0), "op")

    asyncio.run(run())


def test_backfill_from_a_manifest() -> None:
    async def run() -> None:
        store = MemoryObjectStore()
        order = {"order_id": ORDER, "quantity": 2, "attestation_profile": PROFILE}
        await store.put_once(order_key(ORDER, "order.json"), json.dumps(order).encode())
        ref = {"key": "k", "sha256": "0" * 64, "size": 1}
        devices = []
        for i in range(2):
            img = _image(i, f"{0xD0 + i:02x}" * 10)
            devices.append({**img.model_dump(mode="json", exclude={"generation", "objects",
                            "source", "at", "order_id"}), "index": f"{i:07d}",
                            "objects": {"partition": ref, "qrcode": ref}})  # fmt: skip
        manifest = {"order_id": ORDER, "devices": devices}
        await store.put_once(order_key(ORDER, "manifest.json"), json.dumps(manifest).encode())
        assert await index.backfill(store, ORDER) == 2
        assert await index.backfill(store, ORDER) == 2  # again: no-ops
        assert await index.resolve_serial(store, "SN-0001") == [device_id(ORDER, 1)]
        assert await index.resolve(store, "dac_serial", "d1" * 10) == device_id(ORDER, 1)
        view = await index.device_view(store, device_id(ORDER, 0))
        assert view.state == "built" and view.image is not None
        assert set(view.image.objects) == {"partition"}

    asyncio.run(run())


def test_a_pointer_held_by_another_device_is_an_alarm_not_a_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        store = await _fleet(1)
        other = _image(0, "ee" * 10).model_copy(update={"device_id": "WO-G/0000000",
                                                        "order_id": "WO-G"})  # fmt: skip
        await index.record_image(store, other)
        assert await index.resolve_serial(store, "SN-0000") == [device_id(ORDER, 0)]
        assert await index.resolve(store, "dac_serial", "ee" * 10) == "WO-G/0000000"

    asyncio.run(run())
    assert "INDEX CONFLICT ALARM" in caplog.text
