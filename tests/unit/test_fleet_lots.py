"""The device index off the build path (issue #26): generation-0 images read from labels.lot,
pointers written when a station records a device flashed or by `device reindex`."""

from __future__ import annotations

import csv
import io

import pytest

from matterfab import lots
from matterfab.errors import IntegrityError
from matterfab.fleet import index, keys, revocations, scrap
from matterfab.fleet.index import NotFound
from matterfab.messages import ImageReady, StationResult
from matterfab.messages.station import station_record_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.assembler.service import Assembler
from matterfab.services.assembler.stations import StationResults
from tests.unit.test_manifest import lot_of_images, put_order

ORDER, QUANTITY = "LOTIX", 10


async def _built(
    quantity: int = QUANTITY, lot: int = 4
) -> tuple[MemoryObjectStore, list[ImageReady]]:
    """An order built as the builder leaves it: order.json and one labels.lot per lot."""
    store = MemoryObjectStore()
    await put_order(store, ORDER, quantity)
    images: list[ImageReady] = []
    for first in range(0, quantity, lot):
        key, body, made = lot_of_images(ORDER, quantity, first, min(lot, quantity - first))
        store.objects[key] = body
        images += made
    return store, images


def _flashed(img: ImageReady, status: str = "flashed") -> StationResult:
    return StationResult(
        order_id=ORDER, device_id=img.device_id, index=img.index, serial_num=img.serial_num,
        station_id="st", line="L", status=status, mac=None if status != "flashed" else
        f"02:00:00:00:01:{img.index:02x}", reason=None if status == "flashed" else "no",
    )  # fmt: skip


async def test_the_build_path_writes_no_fleet_object_and_a_built_device_has_its_image() -> None:
    store, images = await _built()
    asm = Assembler(store)
    for img in images:
        await asm.handle(img)
    await asm.flush()
    assert not [k for k in store.objects if k.startswith("fleet/")]
    img = images[6]
    view = await index.device_view(store, img.device_id)
    assert view.state == "built" and view.image is not None
    assert (view.image.serial_num, view.image.qr_payload) == (img.serial_num, img.qr_payload)
    assert view.image.dac_serial == img.dac_serial and view.image.generation == 0
    assert view.image.objects["partition"] == img.objects.partition
    assert view.dacs == [{"generation": 0, "dac_serial": img.dac_serial, "revoked": None}]
    # Not flashed, not reindexed: no pointer; the error names what to do.
    with pytest.raises(NotFound, match="device reindex"):
        await index.resolve(store, "qr", img.qr_payload)
    assert await index.resolve_serial(store, img.serial_num) == []


async def test_a_flashed_result_writes_the_pointers_a_failed_one_none() -> None:
    store, images = await _built()
    agg = StationResults(store, write_interval=3600)  # type: ignore[arg-type]
    for img in images[:5]:
        rec = _flashed(img)
        await store.put_once(station_record_key(ORDER, img.index), rec.model_dump_json().encode())
        await agg.handle(rec)
    await agg.handle(_flashed(images[5], "failed"))
    await agg.handle(_flashed(images[3]))  # a redelivery: no-ops
    for img in images[:5]:
        assert await index.resolve_serial(store, img.serial_num) == [img.device_id]
        assert await index.resolve(store, "qr", img.qr_payload) == img.device_id
        assert await index.resolve(store, "dac_serial", img.dac_serial) == img.device_id
        assert (await index.device_view(store, img.device_id)).state == "bound"
    with pytest.raises(NotFound):
        await index.resolve(store, "qr", images[5].qr_payload)
    # 5 devices x 3 pointers + 5 MAC claims: nothing else in the fleet.
    assert len([k for k in store.objects if k.startswith("fleet/")]) == 15
    # One GET per lot read (lots 0-3 and 4-7), however many devices of it were flashed.
    assert len(agg.built[ORDER]._lots) == 2


async def test_lot_images_keeps_few_lots_and_sees_lots_built_after_its_listing() -> None:
    store, images = await _built(quantity=12)
    del store.objects[lots.lot_key(ORDER, 8, lots.LABELS)]  # the last lot is not built yet
    built = index.LotImages(store, ORDER, max_lots=1)
    assert (await built.get(1)) is not None and (await built.get(9)) is None
    key, body, _ = lot_of_images(ORDER, 12, 8, 4)
    store.objects[key] = body  # now it is
    found = await built.get(9)
    assert found is not None and found.serial_num == images[9].serial_num
    assert list(built._lots) == [8]  # at most one kept


async def test_reindex_makes_built_devices_findable_and_is_idempotent() -> None:
    store, images = await _built()
    assert await index.reindex(store, ORDER) == QUANTITY
    before = dict(store.objects)
    assert await index.reindex(store, ORDER) == QUANTITY
    assert store.objects == before
    for img in images:
        assert await index.resolve_serial(store, img.serial_num) == [img.device_id]
        assert await index.resolve(store, "qr", img.qr_payload) == img.device_id
    with pytest.raises(NotFound, match="no order"):
        await index.reindex(store, "NOPE")


async def test_revoke_order_scrap_and_counts_read_the_lots() -> None:
    store, images = await _built()
    targets = await revocations.order_targets(store, ORDER)
    assert [t.dac_serial for t in targets] == [i.dac_serial for i in images]
    assert (await index.order_counts(store, ORDER))["revoked"] == 0
    await revocations.revoke(store, targets[2], "keyCompromise", "op")
    assert (await index.order_counts(store, ORDER))["revoked"] == 1
    assert (await index.device_view(store, images[2].device_id)).state == "revoked"
    done = await scrap.scrap(store, images[7].device_id, "broken", "op")
    assert done.revocation is not None and done.revocation.record.dac_serial == images[7].dac_serial
    rows = list(
        csv.DictReader(io.StringIO(store.objects[f"orders/{ORDER}/bindings-scrapped.csv"].decode()))
    )
    assert [(r["device_id"], r["serial_num"]) for r in rows] == [
        (images[7].device_id, images[7].serial_num)
    ]


async def test_a_device_key_dac_is_recorded_on_its_labels_lot_image() -> None:
    store, images = await _built()
    assert await index.record_bound_dac(store, images[1].device_id, 0, "c0ffee", waits=0)
    view = await index.device_view(store, images[1].device_id)
    assert view.image is not None and view.image.dac_serial == "c0ffee"
    assert view.image.serial_num == images[1].serial_num
    assert await index.resolve(store, "dac_serial", "c0ffee") == images[1].device_id
    # A device of a lot not built: no image to bind to.
    store2 = MemoryObjectStore()
    await put_order(store2, ORDER, 1)
    assert not await index.record_bound_dac(store2, f"{ORDER}/0000000", 0, "aa", waits=0)


def test_a_damaged_labels_lot_is_an_integrity_error() -> None:
    _, body, _ = lot_of_images(ORDER, 4, 0, 4)
    with pytest.raises(IntegrityError):
        index.lot_images_of(body[:-3], "labels.lot")
    flipped = bytearray(body)
    flipped[-200] ^= 1  # inside the last onboarding.json piece or the index
    with pytest.raises(IntegrityError):
        index.lot_images_of(bytes(flipped), "labels.lot")
    assert keys.labels_lot_key(ORDER, 4) == lots.lot_key(ORDER, 4, lots.LABELS)


async def test_a_damaged_labels_lot_holds_up_no_bindings(caplog: pytest.LogCaptureFixture) -> None:
    store, images = await _built(quantity=2, lot=2)
    key = lots.lot_key(ORDER, 0, lots.LABELS)
    store.objects[key] = store.objects[key][:-5]
    agg = StationResults(store, write_interval=0)  # type: ignore[arg-type]
    for img in images:
        await agg.handle(_flashed(img))
    assert f"orders/{ORDER}/bindings.csv" in store.objects
    assert "INDEX ALARM" in caplog.text
    assert not [k for k in store.objects if k.startswith("fleet/")]
