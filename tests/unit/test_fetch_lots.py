"""`order fetch` and `verify` on orders whose label files and DACs live in lot objects.

fetch writes today's per-device files, cut out of the lots (one GET per lot object) and
sha256-checked; verify's lot check finds a lot that does not parse, or whose own index does not
put a piece where the manifest says. Both on the in-memory store.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from matterfab import lots
from matterfab.cli.orders import fetch_from
from matterfab.cli.verify import check_lots
from matterfab.errors import MatterfabError
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.objectstore import MemoryObjectStore

ORDER = "FETCH-1"
QUANTITY = 5
LOT = 3  # devices a lot: 0-2 and 3-4


def whole(store: MemoryObjectStore, key: str, data: bytes) -> dict[str, Any]:
    store.objects[key] = data
    return {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def files_of(i: int) -> dict[str, bytes]:
    """The per-device files of device i (by ref name), as fetch must write them."""
    return {
        "partition": f"NVS {i}".encode() * 10,
        "qrcode": f"PNG {i}".encode() * (3 + i),
        "onboarding": json.dumps({"index": i}).encode(),
        "dac": f"DER {i}".encode() * 4,
    }


def make_order(store: MemoryObjectStore, images_lot: bool = True) -> dict[str, Any]:
    """An order in the bucket as the lot pipeline leaves it; returns its manifest.json.
    `images_lot`: partitions are pieces of images.lot (issue #26), else one object a device
    (orders built before)."""
    rows: list[dict[str, Any]] = []
    kinds = [(lots.DACS, ("dac",)), (lots.LABELS, ("qrcode", "onboarding"))]
    if images_lot:
        kinds.append((lots.IMAGES, ("partition",)))
    for first in range(0, QUANTITY, LOT):
        indices = range(first, min(QUANTITY, first + LOT))
        refs: dict[int, dict[str, Any]] = {i: {} for i in indices}
        for lot_name, names in kinds:
            key = lots.lot_key(ORDER, first, lot_name)
            pieces = [
                lots.Piece(i, OBJECT_FILES[n], files_of(i)[n]) for i in indices for n in names
            ]
            body, entries = lots.pack(pieces)
            store.objects[key] = body
            for e, (i, n) in zip(entries, [(i, n) for i in indices for n in names], strict=True):
                refs[i][n] = {"key": key, "sha256": e.sha256, "size": e.size, "offset": e.offset}
        for i in indices:
            if not images_lot:
                partition = f"orders/{ORDER}/devices/{i:07d}/partition.bin"
                refs[i]["partition"] = whole(store, partition, files_of(i)["partition"])
            rows.append({"index": f"{i:07d}", "device_id": f"{ORDER}/{i:07d}", "objects": refs[i]})
    doc = {
        "order_id": ORDER,
        "quantity": QUANTITY,
        "dac_storage": "factory-nvs",
        "objects": {
            "manifest.csv": whole(store, f"orders/{ORDER}/manifest.csv", b"index\n"),
            "qrcodes.zip": whole(store, f"orders/{ORDER}/qrcodes.zip", b"PK"),
        },
        "devices": rows,
    }
    put_manifest(store, doc)
    return doc


def put_manifest(store: MemoryObjectStore, doc: dict[str, Any]) -> None:
    store.objects[f"orders/{ORDER}/manifest.json"] = json.dumps(doc, sort_keys=True).encode()


@pytest.mark.parametrize("images_lot", [True, False], ids=["images.lot", "per-device"])
async def test_fetch_writes_todays_files_cut_out_of_the_lots(
    tmp_path: Path, images_lot: bool
) -> None:
    store = MemoryObjectStore()
    make_order(store, images_lot)
    assert await fetch_from(store, ORDER, tmp_path) == QUANTITY
    # manifest.json, manifest.csv, qrcodes.zip, each lot object once (2 lots: dacs.lot,
    # labels.lot, images.lot), or a partition per device for an order built before #26.
    assert store.requests == (3 + 6 if images_lot else 3 + QUANTITY + 4)
    assert (tmp_path / "manifest.csv").read_bytes() == b"index\n"
    for i in range(QUANTITY):
        folder = tmp_path / "devices" / f"{i:07d}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "dac.der",
            "onboarding.json",
            "partition.bin",
            "qrcode.png",
        ]
        for name, data in files_of(i).items():
            assert (folder / OBJECT_FILES[name]).read_bytes() == data
    assert not list(tmp_path.rglob("*.lot"))


async def test_fetch_names_the_file_whose_piece_does_not_match(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    ref = doc["devices"][4]["objects"]["qrcode"]
    body = bytearray(store.objects[ref["key"]])
    body[ref["offset"]] ^= 0x01
    store.objects[ref["key"]] = bytes(body)
    where = f"devices/0000004/qrcode.png ({ref['key']} bytes {ref['offset']}+{ref['size']})"
    with pytest.raises(MatterfabError, match=re.escape(f"{where}: sha256 does not match")) as e:
        await fetch_from(store, ORDER, tmp_path)
    assert "\n" not in str(e.value)


async def test_fetch_refuses_a_manifest_it_cannot_name_files_for(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    doc["devices"][1]["objects"]["sticker"] = doc["devices"][1]["objects"]["qrcode"]
    put_manifest(store, doc)
    with pytest.raises(MatterfabError, match="an object 'sticker' that this matterfab has no"):
        await fetch_from(store, ORDER, tmp_path)
    del doc["devices"][1]["objects"]["sticker"]
    doc["devices"][1]["index"] = "../../0000001"
    put_manifest(store, doc)
    with pytest.raises(MatterfabError, match=r"device index '\.\./\.\./0000001' is not 7 digits"):
        await fetch_from(store, ORDER, tmp_path)
    assert not (tmp_path / "manifest.json").exists()  # refused before anything was written


async def test_fetch_says_which_object_is_missing(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    del store.objects[doc["devices"][0]["objects"]["dac"]["key"]]
    with pytest.raises(MatterfabError, match=r"devices/0000000/dac\.der \(orders/FETCH-1/lots/"):
        await fetch_from(store, ORDER, tmp_path)


async def test_lots_that_agree_with_the_manifest_pass() -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    before = store.requests
    assert await check_lots(store, doc["devices"]) == []
    assert store.requests - before == 6  # each lot object once


async def test_a_partition_piece_swapped_in_images_lot_is_a_problem() -> None:
    """images.lot (issue #26) is checked like every lot object: its index against the refs."""
    store = MemoryObjectStore()
    doc = make_order(store)
    a, b = (doc["devices"][i]["objects"]["partition"] for i in (0, 1))
    a["offset"], b["offset"] = b["offset"], a["offset"]
    problems = await check_lots(store, doc["devices"])
    assert len(problems) == 2 and all(p.startswith(a["key"]) for p in problems)
    assert f"partition.bin of {ORDER}/0000000 is bytes 0+" in problems[0]


async def test_a_swapped_lot_is_a_problem_per_piece() -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    first, second = (lots.lot_key(ORDER, f, lots.LABELS) for f in (0, LOT))
    store.objects[first] = store.objects[second]
    problems = await check_lots(store, doc["devices"])
    assert f"{first}: holds no qrcode.png of {ORDER}/0000000, which manifest.json puts there" in (
        problems
    )
    assert f"{first}: holds qrcode.png of device 0000003, which manifest.json does not list" in (
        problems
    )
    assert all(p.startswith(first) for p in problems)
    assert len(problems) == 3 * 2 + 2 * 2  # each piece it lacks, each piece it should not hold


async def test_a_ref_that_disagrees_with_the_lot_index_is_a_problem() -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    ref = doc["devices"][2]["objects"]["dac"]
    ref["offset"] += 1
    problems = await check_lots(store, doc["devices"])
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{ref['key']}: dac.der of {ORDER}/0000002 is bytes {ref['offset'] - 1}+{ref['size']} "
    )
    assert f"manifest.json says {ref['offset']}+{ref['size']}" in problems[0]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncated", "not a lot object (no footer)"),
        ("emptied", "not a lot object (no footer)"),
        ("flipped-piece", "lot piece qrcode.png of device 1: sha256 differs"),
    ],
)
async def test_a_damaged_lot_is_a_problem_not_a_traceback(damage: str, says: str) -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    ref = doc["devices"][1]["objects"]["qrcode"]
    body = bytearray(store.objects[ref["key"]])
    if damage == "truncated":
        del body[-1]
    elif damage == "emptied":
        body.clear()
    else:
        body[ref["offset"]] ^= 0x80
    store.objects[ref["key"]] = bytes(body)
    problems = await check_lots(store, doc["devices"])
    assert problems == [f"{ref['key']}: {says}"]


async def test_a_missing_lot_is_a_problem() -> None:
    store = MemoryObjectStore()
    doc = make_order(store)
    key = lots.lot_key(ORDER, LOT, lots.DACS)
    del store.objects[key]
    assert await check_lots(store, doc["devices"]) == [
        f"{key}: missing (manifest.json points 2 pieces into it)"
    ]
