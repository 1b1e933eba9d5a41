"""Production lines (matterfab/lines.py): the write-once key catalogue, key files, the keys a
station holds, and the allocator fixing an order's key when it accepts it."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from matterfab import catalogue, lines, sealing
from matterfab.errors import InvalidInput
from matterfab.keywrap import KeyWrapper
from matterfab.messages import DEVICES_ALLOCATED, ORDER_EVENTS
from matterfab.messages.base import ObjectRef, Sealing
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.allocator import allocation
from matterfab.services.allocator.order_book import LotSettings, OrderBook
from matterfab.services.allocator.service import Allocator, parse_submission
from tests.unit.test_bad_input import order, setter


def pem() -> bytes:
    return sealing.public_pem(sealing.generate().public_key())


async def test_versions_are_write_once_and_rotation_adds_one() -> None:
    store = MemoryObjectStore()
    first = await lines.register(store, "L1", pem(), new_line=True)
    assert (first.line, first.version) == ("L1", 1)
    with pytest.raises(InvalidInput, match="line L1 already exists") as exc:
        await lines.register(store, "L1", pem(), new_line=True)
    assert exc.value.field == "line"
    with pytest.raises(InvalidInput, match="no line L2"):
        await lines.register(store, "L2", pem(), new_line=False)
    second = await lines.register(store, "L1", pem(), new_line=False)
    assert second.version == 2
    again = sealing.public_pem(first.public_key())
    with pytest.raises(InvalidInput, match="already registered"):
        await lines.register(store, "L1", again, new_line=False)
    assert [k.version for k in await lines.keys(store, "L1")] == [1, 2]
    assert await lines.names(store) == ["L1"]
    assert sorted(store.objects) == [lines.key_object("L1", 1), lines.key_object("L1", 2)]
    catalogue_ = lines.LineCatalogue(store)
    assert (await catalogue_.current("L1")) == second
    assert (await catalogue_.by_fingerprint("L1", first.fingerprint)) == first
    assert await catalogue_.current("nope") is None
    with pytest.raises(InvalidInput, match=r"1\.\.64"):
        await lines.register(store, "bad line", pem(), new_line=True)


def test_private_key_file_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "line.pem"
    key = sealing.generate()
    lines.write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(InvalidInput, match="never overwritten"):
        lines.write_private_key(path, sealing.generate())
    back = lines.read_private_key(path)
    assert sealing.fingerprint(back.public_key()) == sealing.fingerprint(key.public_key())


async def test_local_line_is_made_once(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    first = await lines.ensure_local_line(store, tmp_path)
    again = await lines.ensure_local_line(store, tmp_path)
    assert first == again and first.line == "local"
    path = lines.local_key_path(tmp_path, "local")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = lines.LineKeys.load("local", [], tmp_path)
    assert keys.fingerprints == [first.fingerprint]
    assert (await lines.check_keys(store, keys)) == first


async def test_a_station_key_must_be_a_registered_key_of_its_line(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    await lines.ensure_local_line(store, tmp_path)
    stranger = tmp_path / "other.pem"
    lines.write_private_key(stranger, sealing.generate())
    with pytest.raises(sealing.SealError, match="is not a registered key of the line"):
        await lines.check_keys(store, lines.LineKeys.load("local", [stranger], None))
    with pytest.raises(sealing.SealError, match="no line key here"):
        await lines.check_keys(store, lines.LineKeys("local", []))
    with pytest.raises(sealing.SealError, match="line L9 is not registered"):
        await lines.check_keys(store, lines.LineKeys.load("L9", [stranger], None))


def test_line_keys_open_checks_binding_key_and_plaintext(tmp_path: Path) -> None:
    key = sealing.generate()
    fp = sealing.fingerprint(key.public_key())
    plain = b"factory partition"
    b = sealing.Binding("L", fp, "O", "O/0000000", "partition.bin")
    blob = sealing.seal(plain, key.public_key(), b, b"x" * 32)

    def ref(digest: str) -> ObjectRef:
        sealed = Sealing(line="L", key=fp, sha256=digest, size=len(plain))
        return ObjectRef(key="k", sha256="0" * 64, size=len(blob), sealed=sealed)

    good = ref(hashlib.sha256(plain).hexdigest())
    held = lines.LineKeys("L", [key])
    assert held.open(blob, good, "O", "O/0000000", "partition.bin") == plain
    with pytest.raises(lines.KeyNotHeld, match=f"sealed to line L key {fp}"):
        lines.LineKeys("L", [sealing.generate()]).open(
            blob, good, "O", "O/0000000", "partition.bin"
        )
    with pytest.raises(sealing.SealError, match="sealed for device O/0000000, not O/0000001"):
        held.open(blob, good, "O", "O/0000001", "partition.bin")
    with pytest.raises(sealing.SealError, match="plaintext sha256"):
        held.open(blob, ref("1" * 64), "O", "O/0000000", "partition.bin")


def test_line_keys_open_decodes_an_elided_object_to_the_refs_plaintext() -> None:
    """An object sealed ff-runs/1 opens to the plaintext the ref's `sealed` describes (its
    sha256 and size, not the encoded bytes'); a ref whose size is not the image's refuses it."""
    key = sealing.generate()
    fp = sealing.fingerprint(key.public_key())
    plain = b"\xff" * 9000 + b"entry" * 40 + b"\xff" * 15000
    b = sealing.Binding("L", fp, "O", "O/0000000", "partition.bin")
    (blob,) = sealing.seal_device([(plain, b)], key.public_key(), b"x" * 32, elide=True)
    assert sealing.parse(blob)[0].encoding == sealing.FF_RUNS and len(blob) < len(plain) // 10

    def ref(size: int) -> ObjectRef:
        sealed = Sealing(line="L", key=fp, sha256=hashlib.sha256(plain).hexdigest(), size=size)
        return ObjectRef(key="k", sha256="0" * 64, size=len(blob), sealed=sealed)

    held = lines.LineKeys("L", [key])
    assert held.open(blob, ref(len(plain)), "O", "O/0000000", "partition.bin") == plain
    with pytest.raises(sealing.SealError, match=r"partition\.bin: opened, but its ff-runs/1 body"):
        held.open(blob, ref(len(plain) - 1), "O", "O/0000000", "partition.bin")


async def test_allocator_rejects_an_unknown_line_and_fixes_the_key_at_acceptance(
    tmp_path: Path,
) -> None:
    store = MemoryObjectStore()
    local = await lines.ensure_local_line(store, tmp_path)
    summary = {"name": "acme-a19", "vendor_id": 0xFFF1, "product_id": 0x8000}
    await catalogue.publish(store, summary)
    sent: list[Emit] = []

    async def send(emits: Sequence[Emit]) -> None:
        sent.extend(emits)

    book = OrderBook(store, KeyWrapper(b"k" * 32), LotSettings())
    allocator = Allocator(book, send)

    def events(emits: Sequence[Emit]) -> list[Any]:
        return [e.message for e in emits if e.topic == ORDER_EVENTS]

    bad = parse_submission(order(lambda d: d.update(line="line-9", order_id="B-1")))
    [rejected] = events(await allocator.handle(bad))
    assert rejected.status == "rejected"
    assert [(e.field, "line-9" in e.message) for e in rejected.errors] == [("line", True)]

    sub = parse_submission(order(setter("order_id", value="A-1")))
    assert await allocator.handle(sub) == []
    claim = await book.claim("A-1")
    assert claim is not None and claim.line_key == local.fingerprint
    lots_sent = [e.message for e in sent if e.topic == DEVICES_ALLOCATED]
    assert lots_sent and {(m.line, m.line_key) for m in lots_sent} == {("local", local.fingerprint)}
    # A rotation after acceptance: the order's lots (re-driven from its claim) keep its key.
    await lines.register(store, "local", pem(), new_line=False)
    assert sub.order is not None
    again = allocation.lot_messages(
        sub.order, 0, await book.allocate(sub.order, claim, 0), 64, line_key=claim.line_key
    )
    assert {m.line_key for m in again} == {local.fingerprint}


def test_a_lots_pieces_share_one_encapsulation_and_each_opens_alone_for_its_device() -> None:
    """The builder seals a lot's pieces under one encapsulation (issue #26): each piece still
    opens alone, only for its own device and file, to its own plaintext; a device sealed by
    itself (`seal_files`, as `device reissue` does) is the same bytes as a lot of one."""
    from matterfab.services.builder.service import seal_files, seal_lot

    key = sealing.generate()
    public = key.public_key()
    pem = sealing.public_pem(public).decode()
    line_key = lines.LineKey("L", 1, sealing.fingerprint(public), pem, "2026-12-07T00:00:00Z")
    devices = [
        (f"O/{i:07d}", {"partition": b"\xff" * 4000 + bytes([i]) * 90 + b"\xff" * 4000})
        for i in range(3)
    ]
    devices[1][1]["nvs_keys"] = bytes(range(64))
    sealed = seal_lot(devices, "orders/O/lots/0000000/images.lot", line_key, public, b"s" * 32)
    assert sealed == seal_lot(
        devices, "orders/O/lots/0000000/images.lot", line_key, public, b"s" * 32
    )
    encs = set()
    held = lines.LineKeys("L", [key])
    for (device_id, files), pieces in zip(devices, sealed, strict=True):
        assert set(pieces) == set(files)
        for name, (blob, ref) in pieces.items():
            file = {"partition": "partition.bin", "nvs_keys": "nvs_keys.bin"}[name]
            _, body = sealing.parse(blob)
            encs.add(body[: sealing.ENC_SIZE])
            assert held.open(blob, ref, "O", device_id, file) == files[name]
            other = "O/0000002" if device_id != "O/0000002" else "O/0000000"
            with pytest.raises(sealing.SealError, match="sealed for device"):
                held.open(blob, ref, "O", other, file)
    assert len(encs) == 1  # one encapsulation for the lot
    alone = seal_files(
        devices[1][1],
        {"partition": "a", "nvs_keys": "b"},
        line_key,
        public,
        b"s" * 32,
        devices[1][0],
    )
    (one,) = seal_lot([devices[1]], "a", line_key, public, b"s" * 32)
    assert alone["partition"] == one["partition"]
    assert alone["nvs_keys"][0] == one["nvs_keys"][0] and alone["nvs_keys"][1].key == "b"
