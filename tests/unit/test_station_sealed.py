"""A station and sealed images (services/station/sealed.py), with an in-memory bucket: it opens
its line's images in memory, skips other lines', and flashes nothing it cannot open, without
recording a final failure (nothing lost)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from matterfab import lines, lots, sealing
from matterfab.messages import IMAGES_READY, STATION_RESULTS, ImageReady, StationResult
from matterfab.messages.base import device_key
from matterfab.messages.station import station_record_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.builder.service import seal_ref
from matterfab.services.station.config import load_settings
from matterfab.services.station.sealed import SealedImages
from matterfab.services.station.service import FolderFlasher, Station
from tests.unit.test_station_service import image as plain_image

SECRET = b"b" * 32


def plaintext(index: int) -> bytes:
    return bytes([index]) * 0x3000


async def sealed_image(
    store: MemoryObjectStore, key: lines.LineKey, index: int, order: str = "O"
) -> ImageReady:
    """An image of device `index` whose partition is sealed to `key`, stored in `store`."""
    obj = device_key(order, index, "partition.bin")
    device_id = f"{order}/{index:07d}"
    b = sealing.Binding(key.line, key.fingerprint, order, device_id, "partition.bin")
    data = sealing.seal(plaintext(index), key.public_key(), b, SECRET)
    await store.put_once(obj, data)
    msg = plain_image(index)
    objects = msg.objects.model_copy(
        update={"partition": seal_ref(obj, data, plaintext(index), key)}
    )
    return msg.model_copy(
        update={"order_id": order, "device_id": device_id, "objects": objects, "line": key.line}
    )


class Recorder:
    """A folder flasher that also counts its calls."""

    def __init__(self, out: Path):
        self.folder = FolderFlasher(out, None)
        self.calls: list[str] = []

    async def flash(self, msg: ImageReady, partition: bytes, keys: bytes | None) -> str:
        self.calls.append(msg.device_id)
        return await self.folder.flash(msg, partition, keys)


@pytest.fixture
async def setup(tmp_path: Path) -> Any:
    store = MemoryObjectStore()
    key = await lines.ensure_local_line(store, tmp_path / "state", "L")
    keys = lines.LineKeys.load("L", [], tmp_path / "state")
    return store, key, keys


def station(
    store: MemoryObjectStore, out: Path, keys: lines.LineKeys | None, **kw: Any
) -> tuple[Station, Recorder]:
    settings = load_settings(station_id="s1", line="L", out=str(out), backoff=0, **kw)
    flasher = Recorder(out)
    st = Station(settings, store, flasher, random.Random(1), sealed=SealedImages("L", keys))  # type: ignore[arg-type]
    return st, flasher


def results(emits: list[Emit]) -> list[StationResult]:
    return [e.message for e in emits if e.topic == STATION_RESULTS]  # type: ignore[misc]


async def test_opens_in_memory_and_flashes_the_plaintext(setup: Any, tmp_path: Path) -> None:
    store, key, keys = setup
    msg = await sealed_image(store, key, 3)
    st, flasher = station(store, tmp_path / "out", keys)
    [res] = results(await st.handle(msg))
    assert res.status == "flashed" and flasher.calls == ["O/0000003"]
    assert (tmp_path / "out" / "O" / "0000003" / "partition.bin").read_bytes() == plaintext(3)


async def test_objects_swapped_between_devices_flash_nothing_and_lose_nothing(
    setup: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, key, keys = setup
    a, b = await sealed_image(store, key, 0), await sealed_image(store, key, 1)
    ka, kb = a.objects.partition.key, b.objects.partition.key
    store.objects[ka], store.objects[kb] = store.objects[kb], store.objects[ka]
    st, flasher = station(store, tmp_path / "out", keys)
    caplog.set_level(logging.ERROR)
    for msg, other in ((a, b), (b, a)):
        emits = await st.handle(msg)
        [res] = results(emits)
        assert (res.status, res.final) == ("failed", False)
        assert f"sealed for device {other.device_id}, not {msg.device_id}" in (res.reason or "")
        assert [e.topic for e in emits] == [
            STATION_RESULTS
        ]  # not re-queued: no station can open it
        assert station_record_key("O", msg.index) not in store.objects  # no final failure
    assert flasher.calls == []
    lines_ = [r.getMessage() for r in caplog.records if "not flashed" in r.getMessage()]
    assert len(lines_) == 2
    assert (
        "device O/0000000 not flashed" in lines_[0] and "sealed for device O/0000001" in lines_[0]
    )


async def test_header_forged_to_the_device_does_not_open(setup: Any, tmp_path: Path) -> None:
    store, key, keys = setup
    a, b = await sealed_image(store, key, 0), await sealed_image(store, key, 1)
    forged = store.objects[b.objects.partition.key].replace(b"O/0000001", b"O/0000000")
    store.objects[a.objects.partition.key] = forged
    st, flasher = station(store, tmp_path / "out", keys)
    [res] = results(await st.handle(a))
    assert res.final is False and "does not open" in (res.reason or "") and flasher.calls == []


async def test_other_lines_orders_are_skipped_with_one_line_per_order(
    setup: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, _, keys = setup
    other = await lines.register(
        store, "M", sealing.public_pem(sealing.generate().public_key()), new_line=True
    )
    images = [await sealed_image(store, other, i, order="OM") for i in range(3)]
    st, flasher = station(store, tmp_path / "out", keys)
    caplog.set_level(logging.INFO)
    for msg in images:
        assert await st.handle(msg) == []
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "sealed for line M" in skipped[0].getMessage()
    assert flasher.calls == []


async def test_an_order_sealed_to_a_key_not_held_goes_back_to_the_line(
    setup: Any, tmp_path: Path
) -> None:
    store, _, keys = setup
    newer = await lines.register(
        store, "L", sealing.public_pem(sealing.generate().public_key()), new_line=False
    )
    msg = await sealed_image(store, newer, 5)
    st, flasher = station(store, tmp_path / "out", keys, max_requeues=1)
    emits = await st.handle(msg)
    assert [e.topic for e in emits] == [STATION_RESULTS, IMAGES_READY]
    assert emits[1].message.requeues == 1  # type: ignore[attr-defined]
    [res] = results(emits)
    assert res.final is False and f"key {newer.fingerprint}" in (res.reason or "")
    last = await st.handle(emits[1].message)  # type: ignore[arg-type]
    assert [e.topic for e in last] == [STATION_RESULTS]  # left: never a final failure
    assert flasher.calls == [] and station_record_key("O", 5) not in store.objects


async def test_station_with_a_key_that_is_not_its_lines_stops_at_start(
    setup: Any, tmp_path: Path
) -> None:
    store, _, _ = setup
    wrong = tmp_path / "wrong.pem"
    lines.write_private_key(wrong, sealing.generate())
    with pytest.raises(sealing.SealError, match="is not a registered key of the line"):
        await SealedImages("L", lines.LineKeys.load("L", [wrong], None)).check(store)


async def images_lot(
    store: MemoryObjectStore, key: lines.LineKey, indexes: list[int], order: str = "O"
) -> list[ImageReady]:
    """Images of devices `indexes` whose sealed partitions are pieces of one images.lot, as
    the builder stores them (issue #26)."""
    blobs = []
    for index in indexes:
        device_id = f"{order}/{index:07d}"
        b = sealing.Binding(key.line, key.fingerprint, order, device_id, "partition.bin")
        blobs.append(sealing.seal(plaintext(index), key.public_key(), b, SECRET))
    lot = lots.lot_key(order, indexes[0], lots.IMAGES)
    body, entries = lots.pack(
        lots.Piece(i, "partition.bin", blob) for i, blob in zip(indexes, blobs, strict=True)
    )
    await store.put_once(lot, body)
    out = []
    for index, blob, entry in zip(indexes, blobs, entries, strict=True):
        ref = seal_ref(lot, blob, plaintext(index), key).model_copy(update={"offset": entry.offset})
        msg = plain_image(index)
        out.append(
            msg.model_copy(
                update={
                    "order_id": order,
                    "device_id": f"{order}/{index:07d}",
                    "objects": msg.objects.model_copy(update={"partition": ref}),
                    "line": key.line,
                }
            )
        )
    return out


async def test_reads_its_piece_of_images_lot_with_one_ranged_get(
    setup: Any, tmp_path: Path
) -> None:
    store, key, keys = setup
    images = await images_lot(store, key, [4, 5, 6])
    st, flasher = station(store, tmp_path / "out", keys)
    ranged: list[tuple[str, int, int]] = []
    get_range = store.get_range

    async def counted(k: str, offset: int, size: int) -> bytes | None:
        ranged.append((k, offset, size))
        return await get_range(k, offset, size)

    store.get_range = counted  # type: ignore[method-assign]
    [res] = results(await st.handle(images[1]))
    assert res.status == "flashed" and flasher.calls == ["O/0000005"]
    assert (tmp_path / "out" / "O" / "0000005" / "partition.bin").read_bytes() == plaintext(5)
    ref = images[1].objects.partition
    assert ranged == [(ref.key, ref.offset, ref.size)]  # exactly its bytes, one GET


async def test_a_piece_swapped_in_images_lot_flashes_nothing(setup: Any, tmp_path: Path) -> None:
    """A ref pointing at another device's piece (same size): the header names that device."""
    store, key, keys = setup
    a, b = await images_lot(store, key, [0, 1])
    moved = a.objects.partition.model_copy(update={"offset": b.objects.partition.offset})
    a = a.model_copy(update={"objects": a.objects.model_copy(update={"partition": moved})})
    st, flasher = station(store, tmp_path / "out", keys)
    [res] = results(await st.handle(a))
    assert (res.status, res.final) == ("failed", False) and flasher.calls == []
    assert "sealed for device O/0000001, not O/0000000" in (res.reason or "")
