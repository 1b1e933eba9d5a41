"""The services' handlers driven directly, on the in-memory store: fast checks of behaviour.

The real-stack tests (tests/e2e, tests/reliability) prove the wiring; these pin what each
handler decides: rejection, lots cut once per order, idempotent redelivery, adoption of the
DACs in a lot's dacs.lot, the integrity alarm, the builder's labels.lot, S3 requests per device,
chunk counting and completion.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from matterfab import lots, profiles, sealing
from matterfab.errors import IntegrityError, InvalidInput
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LineKeys, ensure_local_line
from matterfab.matter import attestation, label, nvs_reader
from matterfab.messages import (
    DAC_LEDGER,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    ImageReady,
    LedgerLot,
    LotAllocated,
    LotAttested,
    ObjectRef,
    OrderEvent,
)
from matterfab.messages.base import device_key, order_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader
from matterfab.runtime import Emit
from matterfab.services.allocator.order_book import LotSettings, OrderBook
from matterfab.services.allocator.service import Allocator, parse_submission
from matterfab.services.assembler.service import Assembler
from matterfab.services.builder.service import Builder
from matterfab.services.signer.service import Signer, _Loaded
from tests.sealed import local_keys, open_if_sealed

VID, PID = 0xFFF1, 0x8000


def order(order_id: str = "HANDLER-1", quantity: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "type": "work-order/v1",
        "order_id": order_id,
        "product": {"vendor_id": VID, "product_id": PID, "vendor_name": "Acme"},
        "quantity": quantity,
        "mfg_date": "2026-11-29",
        "attestation_profile": "handlers",
        "commissioning": {"iteration_count": 1000},
        **extra,
    }


@dataclass
class Line:
    """One of each service's handler over one in-memory bucket."""

    store: MemoryObjectStore
    wrapper: KeyWrapper
    allocator: Allocator
    signer: Signer
    builder: Builder
    sent: list[Emit] = field(default_factory=list)
    keys: LineKeys | None = None  # line local's key (the builder seals to it)

    async def submit(self, doc: dict[str, Any]) -> list[OrderEvent]:
        """The allocator's handling of one work order: its order events, in order."""
        self.sent.clear()
        last = await self.allocator.handle(parse_submission(json.dumps(doc).encode()))
        events = [e for e in [*self.sent, *last] if e.topic == ORDER_EVENTS]
        return [e.message for e in events]  # type: ignore[misc]

    def allocated(self) -> list[LotAllocated]:
        """The lots the last submit sent, checked to be keyed by their lot_id."""
        emits = [e for e in self.sent if e.topic == DEVICES_ALLOCATED]
        out = [e.message for e in emits if isinstance(e.message, LotAllocated)]
        assert [e.key for e in emits] == [m.lot_id for m in out]
        return out

    def allocator_with(self, settings: LotSettings) -> Allocator:
        """Another allocator on this bucket (another process, other lot settings)."""

        async def send(emits: Sequence[Emit]) -> None:
            self.sent.extend(emits)

        return Allocator(OrderBook(self.store, self.wrapper, settings), send)


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("handlers", VID, PID, profiles_dir=path)
    return path


@pytest.fixture
async def line(profile_dir: Path, tmp_path: Path) -> Line:
    store = MemoryObjectStore()
    await ensure_local_line(store, tmp_path)  # as `matterfab up` does: line local, its key
    keys = local_keys(tmp_path)
    wrapper = KeyWrapper(os.urandom(32))
    signer = Signer(store, wrapper, profiles_dir=profile_dir)
    await signer.publish_profiles()
    sent: list[Emit] = []

    async def send(emits: Sequence[Emit]) -> None:
        sent.extend(emits)

    allocator = Allocator(OrderBook(store, wrapper, LotSettings()), send)
    return Line(store, wrapper, allocator, signer, Builder(store, wrapper, None), sent, keys)


def only(emits: Sequence[Emit], topic: str) -> list[Any]:
    return [e.message for e in emits if e.topic == topic]


def indices(lots_: Sequence[LotAllocated | LotAttested]) -> list[list[int]]:
    return [[d.index for d in lot.devices] for lot in lots_]


# -- allocator ---------------------------------------------------------------------------


async def test_allocator_accepts_and_allocates_every_device_in_lots(line: Line) -> None:
    events = await line.submit(order(quantity=4))
    assert [e.status for e in events] == ["accepted"]
    (lot,) = line.allocated()  # 4 devices: one lot (lots.MIN_SPLIT)
    assert lot.lot_id == "HANDLER-1/0000000"
    devices = list(lot.identities())
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert [d.device_id for d in devices][-1] == "HANDLER-1/0000003"
    assert len({d.serial_num for d in devices}) == 4
    assert len({d.discriminator for d in devices}) == 4
    assert await line.store.exists(order_key("HANDLER-1", "order.json"))
    claim = json.loads(await line.store.get(order_key("HANDLER-1", "claim.json")))
    assert claim["lot_size"] == lots.lot_size(1000, quantity=4) == lots.MIN_SPLIT


async def test_an_orders_lot_size_is_fixed_when_it_is_accepted(line: Line) -> None:
    small = line.allocator_with(LotSettings(max_devices=2))
    line.sent.clear()
    assert await small.handle(parse_submission(json.dumps(order(quantity=5)).encode())) == []
    first = line.allocated()
    assert indices(first) == [[0, 1], [2, 3], [4]]
    assert [m.lot_id for m in first] == [
        "HANDLER-1/0000000",
        "HANDLER-1/0000002",
        "HANDLER-1/0000004",
    ]
    # Redelivered to an allocator configured otherwise: claim.json decides, same lots.
    await line.submit(order(quantity=5))
    assert [m.model_dump() for m in line.allocated()] == [m.model_dump() for m in first]


async def test_a_claim_written_before_lots_is_cut_by_the_default_size(line: Line) -> None:
    await line.submit(order(quantity=5, commissioning={"iteration_count": 10_000}))
    key = order_key("HANDLER-1", "claim.json")
    claim = json.loads(await line.store.get(key))
    assert claim.pop("lot_size") == lots.lot_size(10_000, quantity=5) == lots.MIN_SPLIT
    line.store.objects[key] = json.dumps(claim).encode()  # as written before lots
    again = line.allocator_with(LotSettings(max_devices=2))
    line.sent.clear()
    doc = order(quantity=5, commissioning={"iteration_count": 10_000})
    assert await again.handle(parse_submission(json.dumps(doc).encode())) == []
    assert indices(line.allocated()) == [[0, 1, 2, 3, 4]]  # lots.lot_size(10_000), not 2


def test_lot_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from matterfab.errors import StackError
    from matterfab.services.allocator.order_book import load_lot_settings

    monkeypatch.setenv("MATTERFAB_LOT_MAX_DEVICES", "8")
    monkeypatch.setenv("MATTERFAB_LOT_SECONDS", "0.05")
    settings = load_lot_settings()
    assert (settings.max_devices, settings.seconds) == (8, 0.05)
    assert settings.lot_size(parse_submission(json.dumps(order()).encode()).order) == 8
    monkeypatch.setenv("MATTERFAB_LOT_MAX_DEVICES", "257")  # a lot message holds at most 256
    with pytest.raises(StackError, match="MATTERFAB_LOT_MAX_DEVICES"):
        load_lot_settings()


async def test_allocator_rejects_unknown_profile_and_stores_nothing(line: Line) -> None:
    before = dict(line.store.objects)
    events = await line.submit(order(attestation_profile="nope"))
    assert [e.status for e in events] == ["rejected"]
    assert [(e.field, "unknown attestation profile" in e.message) for e in events[0].errors] == [
        ("attestation_profile", True)
    ]
    assert line.store.objects == before


async def test_allocator_redelivery_gives_the_same_devices(line: Line) -> None:
    await line.submit(order(quantity=3))
    first = line.allocated()
    await line.submit(order(quantity=3))
    again = line.allocated()
    assert [d.model_dump() for d in again] == [d.model_dump() for d in first]


async def test_allocator_refuses_an_order_id_reused_for_other_content(line: Line) -> None:
    await line.submit(order(quantity=3))
    events = await line.submit(order(quantity=5))
    assert [e.status for e in events] == ["rejected"]
    assert events[0].errors[0].field == "order_id"
    assert line.allocated() == []


async def test_two_orders_of_one_product_share_no_serial_or_discriminator(line: Line) -> None:
    await line.submit(order("HANDLER-A", quantity=3))
    (a,) = line.allocated()
    await line.submit(order("HANDLER-B", quantity=3))
    (b,) = line.allocated()
    assert not {d.serial_num for d in a.devices} & {d.serial_num for d in b.devices}
    assert not {d.discriminator for d in a.devices} & {d.discriminator for d in b.devices}


# -- signer ------------------------------------------------------------------------------


async def attest(line: Line, lot: LotAllocated) -> tuple[LotAttested, LedgerLot]:
    emits = await line.signer.handle(lot)
    assert all(e.key == lot.lot_id for e in emits)
    (attested,) = only(emits, DEVICES_ATTESTED)
    (entry,) = only(emits, DAC_LEDGER)
    return attested, entry


async def one_lot(line: Line, quantity: int = 3, **extra: Any) -> LotAllocated:
    await line.submit(order(quantity=quantity, **extra))
    (lot,) = line.allocated()
    return lot


def dacs_key(lot: LotAllocated | LotAttested) -> str:
    return lots.lot_key(lot.order_id, lot.devices[0].index, lots.DACS)


async def test_signer_issues_a_lot_in_one_object_and_announces_its_pieces(line: Line) -> None:
    lot = await one_lot(line, 3)
    await line.signer._profile("handlers")  # loaded (and its catalogue entry published) once
    before = line.store.requests
    attested, entry = await attest(line, lot)
    assert line.store.requests - before == 1  # one PUT for the lot, no lookup first
    body = await line.store.get(dacs_key(lot))
    stored = lots.unpack(body)
    assert [(e.index, e.name) for e in stored.entries] == [
        (0, "dac.der"),
        (1, "dac.der"),
        (2, "dac.der"),
    ]
    assert not [k for k in line.store.objects if k.endswith("/dac.der")]  # no per-device DAC
    reader = RefReader(line.store)
    pai = profiles.load_profile("handlers", line.signer.profiles_dir).require_pai()
    for device, piece, dac in zip(attested.devices, stored.entries, entry.dacs, strict=True):
        assert device.dac is not None and device.dac.key == dacs_key(lot)
        der = await reader.read(device.dac)
        assert der == stored.cut(piece)
        # Neither the DAC nor its wrapped key travels: both are the piece's, in dacs.lot.
        assert device.dac_cert_b64 == device.dac_key_wrapped == ""
        cert = x509.load_der_x509_certificate(der)
        attestation.verify_dac(cert, pai, vendor_id=VID, product_id=PID)
        assert cert.serial_number == int(device.dac_serial, 16)
        assert (dac.dac_serial, dac.index, dac.device_id) == (
            device.dac_serial,
            device.index,
            f"HANDLER-1/{device.index:07d}",
        )
        assert dac.dac_sha256 == hashlib.sha256(der).hexdigest() == device.dac.sha256
        assert dac.issued_at.isoformat() == piece.meta[lots.DAC_ISSUED_META]
        # The wrapped key is bound to its device: another device's id does not open it.
        line.wrapper.unwrap(piece.meta[lots.DAC_KEY_META], f"dac-key:HANDLER-1/{device.index:07d}")
    assert len({d.dac_serial for d in attested.devices}) == 3
    assert attested.pai_cert_b64 and attested.cd_b64 and attested.lot_id == lot.lot_id
    assert entry.dacs_lot.key == dacs_key(lot) and entry.dacs_lot.offset is None
    assert entry.dacs_lot.sha256 == hashlib.sha256(body).hexdigest()
    assert (entry.lot_id, entry.vendor_id, entry.product_id) == (lot.lot_id, VID, PID)


async def test_signer_redelivery_adopts_the_dacs_in_dacs_lot(line: Line) -> None:
    lot = await one_lot(line, 3)
    first, entry = await attest(line, lot)
    objects = dict(line.store.objects)
    before = line.store.requests
    again, entry_again = await attest(line, lot)
    assert line.store.requests - before == 2  # the refused PUT, one GET
    assert line.store.objects == objects  # no second object, nothing rewritten
    assert again.model_dump() == first.model_dump()  # same serials, keys, refs
    assert entry_again.model_dump(exclude={"at"}) == entry.model_dump(exclude={"at"})


async def test_two_signers_racing_on_one_lot_store_one_dacs_lot(
    line: Line, profile_dir: Path
) -> None:
    lot = await one_lot(line, 4)
    other = Signer(line.store, line.wrapper, profiles_dir=profile_dir)
    results = await asyncio.gather(
        *(attest(line, lot) for _ in range(2)),
        *(
            attest(Line(line.store, line.wrapper, line.allocator, other, line.builder), lot)
            for _ in range(2)
        ),
    )
    assert len({tuple(d.dac_serial for d in a.devices) for a, _ in results}) == 1
    assert len({json.dumps(a.model_dump(mode="json")) for a, _ in results}) == 1
    assert [k for k in line.store.objects if k.endswith(lots.DACS)] == [dacs_key(lot)]


async def test_a_hsm_key_source_issues_the_lot_off_the_event_loop(line: Line) -> None:
    class DigestOnly:
        """A key source that is not in-memory (as a PKCS#11 one): the lot goes to a thread."""

        def __init__(self, inner: attestation.InMemorySigner) -> None:
            self.inner = inner
            self.calls = 0

        def public_key(self) -> Any:
            return self.inner.public_key()

        def sign_digest(self, digest: bytes) -> bytes:
            self.calls += 1
            return self.inner.sign_digest(digest)

    lot = await one_lot(line, 3)
    loaded = await line.signer._profile("handlers")
    assert isinstance(loaded.signer, attestation.InMemorySigner)
    hsm = DigestOnly(loaded.signer)
    line.signer._profiles["handlers"] = _Loaded(loaded.profile, hsm)
    attested, _ = await attest(line, lot)
    assert hsm.calls == 3 and len({d.dac_serial for d in attested.devices}) == 3


async def test_signer_alarms_on_a_dacs_lot_it_cannot_adopt(line: Line) -> None:
    lot = await one_lot(line, 3)
    key = dacs_key(lot)
    await line.store.put_once(key, b"not adoptable")
    with pytest.raises(IntegrityError, match="not a lot object"):
        await line.signer.handle(lot)


async def test_signer_alarms_on_a_dacs_lot_of_other_devices(line: Line) -> None:
    lot = await one_lot(line, 3)
    await attest(line, lot)
    # The same first device, but a lot cut otherwise: never adopt part or more of another lot.
    for devices in (
        lot.devices[:2],
        [*lot.devices, lot.devices[0].model_copy(update={"index": 3})],
    ):
        other = lot.model_copy(update={"devices": devices})
        with pytest.raises(IntegrityError, match="not adoptable"):
            await line.signer.handle(other)


async def test_signer_alarms_on_a_damaged_dacs_lot(line: Line) -> None:
    lot = await one_lot(line, 2)
    await attest(line, lot)
    key = dacs_key(lot)
    stored = lots.unpack(line.store.objects[key])
    # A piece whose bytes are not those its index gives.
    body = bytearray(stored.body)
    body[stored.entries[1].offset + 10] ^= 0xFF
    line.store.objects[key] = bytes(body)
    with pytest.raises(IntegrityError, match="sha256 differs"):
        await line.signer.handle(lot)
    # A piece without its wrapped key.
    pieces = [
        lots.Piece(
            e.index,
            e.name,
            stored.cut(e),
            {k: v for k, v in e.meta.items() if k != lots.DAC_KEY_META},
        )
        for e in stored.entries
    ]
    line.store.objects[key] = lots.pack(pieces)[0]
    with pytest.raises(IntegrityError, match="without its wrapped key"):
        await line.signer.handle(lot)
    # Two devices' DACs swapped: each wrapped key is bound to its own device.
    swapped = [
        lots.Piece(e.index, e.name, stored.cut(s), dict(s.meta))
        for e, s in zip(stored.entries, reversed(stored.entries), strict=True)
    ]
    line.store.objects[key] = lots.pack(swapped)[0]
    with pytest.raises(IntegrityError, match="not adoptable"):
        await line.signer.handle(lot)


async def test_signer_passes_an_on_module_lot_with_the_cd_only(line: Line) -> None:
    lot = await one_lot(line, 2, dac_storage="on-module")
    emits = await line.signer.handle(lot)
    assert only(emits, DAC_LEDGER) == []
    (attested,) = only(emits, DEVICES_ATTESTED)
    assert attested.cd_b64 and attested.pai_cert_b64 == ""
    assert all((d.dac_serial, d.dac_cert_b64, d.dac) == ("", "", None) for d in attested.devices)
    assert not [k for k in line.store.objects if "/lots/" in k]


# -- builder -------------------------------------------------------------------------------


async def build_lot(line: Line, lot: LotAllocated) -> tuple[LotAttested, list[ImageReady]]:
    attested, _ = await attest(line, lot)
    emits = await line.builder.handle(attested)
    images = only(emits, IMAGES_READY)
    assert [e.key for e in emits] == [i.device_id for i in images]  # keyed by device
    return attested, images


async def build_all(line: Line, quantity: int) -> list[ImageReady]:
    await line.submit(order(quantity=quantity))
    ready = []
    for lot in line.allocated():
        ready.extend((await build_lot(line, lot))[1])
    return ready


async def test_builder_stores_what_it_announces(line: Line) -> None:
    (image,) = await build_all(line, 1)
    reader = RefReader(line.store)
    for name, ref in image.objects.model_dump(exclude_none=True).items():
        data = await reader.read(ref)  # a whole object, or its byte range in a lot object
        assert hashlib.sha256(data).hexdigest() == ref["sha256"], name
        assert len(data) == ref["size"], name
    onboarding_json = await reader.read(image.objects.onboarding)
    assert onboarding_json == image.record().to_json()  # one record: the file and the message
    onboarding = json.loads(onboarding_json)
    assert onboarding["qr_payload"] == image.qr_payload
    assert onboarding["serial_num"] == image.serial_num
    assert line.keys is not None
    partition = open_if_sealed(await RefReader(line.store).read(image.objects.partition), line.keys)
    factory = nvs_reader.decode_partition(partition)["chip-factory"]
    assert factory["serial-num"] == ("string", image.serial_num)


async def test_builder_messages_equal_validated_ones(line: Line) -> None:
    """The builder makes its refs, records and messages without validating values it made
    (model_construct): each equals what validation of its own dump makes, on the wire too."""
    for image in await build_all(line, 3):
        checked = ImageReady.model_validate(image.model_dump())
        assert image == checked
        assert image.model_dump_json() == checked.model_dump_json()
        for ref in image.objects.model_dump(exclude_none=True):
            got = getattr(image.objects, ref)
            assert got == ObjectRef.model_validate(got.model_dump()), ref


async def test_builder_labels_lot_cuts_back_to_each_devices_files(line: Line) -> None:
    lot = await one_lot(line, 3)
    attested, images = await build_lot(line, lot)
    labels_key = lots.lot_key(lot.order_id, 0, lots.LABELS)
    labels = lots.unpack(await line.store.get(labels_key))
    # Every PNG piece first, then every onboarding record: what the records' offsets rely on.
    assert [(e.index, e.name) for e in labels.entries] == [
        *((i, "qrcode.png") for i in range(3)),
        *((i, "onboarding.json") for i in range(3)),
    ]
    keys = set(line.store.objects)
    for i, (image, device) in enumerate(zip(images, attested.devices, strict=True)):
        png = labels.piece(i, "qrcode.png")
        doc = labels.piece(i, "onboarding.json")
        assert image.qrcode_png_b64 is None  # not inline: the PNG is in labels.lot only
        assert png == label.qr_png(image.qr_payload)
        assert doc == image.record().to_json()
        objects = json.loads(doc)["objects"]
        assert objects["qrcode"] == image.objects.qrcode.model_dump(mode="json", exclude_none=True)
        assert objects["qrcode"]["key"] == labels_key
        assert png == labels.body[objects["qrcode"]["offset"] :][: objects["qrcode"]["size"]]
        assert device.dac is not None
        assert objects["dac"] == device.dac.model_dump(mode="json", exclude_none=True)
        assert objects["partition"]["key"] == lots.lot_key(lot.order_id, 0, lots.IMAGES)
        assert "offset" in objects["partition"]
        assert image.objects.onboarding.key == labels_key
        assert image.objects.onboarding.offset == labels.entries[3 + i].offset
        # Nothing per device: what a station flashes is in images.lot too.
        for name in ("partition.bin", "qrcode.png", "onboarding.json", "dac.der"):
            assert device_key(lot.order_id, i, name) not in keys
    assert not any("/devices/" in k for k in keys)


async def test_builder_images_lot_holds_each_devices_sealed_pieces(line: Line) -> None:
    """One images.lot a lot: each device's sealed partition is its own piece, bound to its
    device and file name, and its ref's offset, size and digests are the piece's."""
    lot = await one_lot(line, 3)
    _, images = await build_lot(line, lot)
    images_key = lots.lot_key(lot.order_id, 0, lots.IMAGES)
    packed = lots.unpack(line.store.objects[images_key])
    assert [(e.index, e.name) for e in packed.entries] == [(i, "partition.bin") for i in range(3)]
    for image, entry in zip(images, packed.entries, strict=True):
        ref = image.objects.partition
        assert (ref.key, ref.offset, ref.size, ref.sha256) == (
            images_key,
            entry.offset,
            entry.size,
            entry.sha256,
        )
        piece = await line.store.get_range(images_key, entry.offset, entry.size)
        assert piece is not None and hashlib.sha256(piece).hexdigest() == ref.sha256
        found, _ = sealing.parse(piece)
        assert (found.device_id, found.file) == (image.device_id, "partition.bin")
        # Its 0xFF runs elided before sealing (issue #26): a tenth of the plaintext's size,
        # which the ref's `sealed` gives with its digest, as the station flashes it.
        assert found.encoding == sealing.FF_RUNS
        assert ref.sealed is not None and ref.sealed.size == 0x6000 > 6 * ref.size
        assert line.keys is not None
        plain = line.keys.open(piece, ref, image.order_id, image.device_id, "partition.bin")
        assert hashlib.sha256(plain).hexdigest() == ref.sealed.sha256


async def test_builder_redelivery_is_a_no_op_and_tampering_alarms(line: Line) -> None:
    lot = await one_lot(line, 3)
    attested, first = await build_lot(line, lot)
    objects = dict(line.store.objects)
    again = only(await line.builder.handle(attested), IMAGES_READY)
    # A rebuild draws nothing new: the same bytes, so every write-once PUT is a no-op.
    assert line.store.objects == objects
    assert [i.model_dump(exclude={"at"}) for i in again] == [
        i.model_dump(exclude={"at"}) for i in first
    ]
    line.store.objects[first[1].objects.partition.key] = b"tampered"
    with pytest.raises(IntegrityError, match="different content"):
        await line.builder.handle(attested)
    line.store.objects = dict(objects)
    labels_key = first[0].objects.onboarding.key
    line.store.objects[labels_key] = objects[labels_key][:-1] + b"x"
    with pytest.raises(IntegrityError, match="different content"):
        await line.builder.handle(attested)


async def test_builder_keeps_an_encrypted_lots_keys_per_device(line: Line) -> None:
    lot = await one_lot(line, 2, partition={"size": 0x6000, "encryption": "xts"})
    attested, images = await build_lot(line, lot)
    objects = dict(line.store.objects)
    for image in images:
        ref = image.objects.nvs_keys
        assert ref is not None and ref.key == lots.lot_key(lot.order_id, 0, lots.IMAGES)
        assert ref.offset is not None  # a piece of images.lot, right after its partition
        assert ref.offset == image.objects.partition.offset + image.objects.partition.size
        piece = objects[ref.key][ref.offset : ref.offset + ref.size]
        assert hashlib.sha256(piece).hexdigest() == ref.sha256
    await line.builder.handle(attested)  # redelivered: the same encrypted bytes
    assert line.store.objects == objects


def inline(line: Line, attested: LotAttested) -> LotAttested:
    """`attested` as signers sent lots before issue #26: each DAC and wrapped key inline."""
    stored = lots.unpack(line.store.objects[dacs_key(attested)])
    by_index = {e.index: e for e in stored.entries}
    devices = [
        d.model_copy(
            update={
                "dac_cert_b64": base64.b64encode(stored.cut(by_index[d.index])).decode(),
                "dac_key_wrapped": by_index[d.index].meta[lots.DAC_KEY_META],
            }
        )
        for d in attested.devices
    ]
    return attested.model_copy(update={"devices": devices})


async def test_builder_refuses_a_lot_whose_dac_ref_is_not_its_dac(line: Line) -> None:
    lot = await one_lot(line, 2)
    attested, _ = await attest(line, lot)
    for form, error, match in (
        (attested, IntegrityError, "the DAC of device 1 is not its ref's"),
        (inline(line, attested), InvalidInput, r"devices\[1\]\.dac"),
    ):
        first, second = form.devices
        bad = form.model_copy(
            update={"devices": [first, second.model_copy(update={"dac": first.dac})]}
        )
        with pytest.raises(error, match=match):
            await line.builder.handle(bad)


async def test_builder_reads_a_lots_dacs_once_and_builds_as_from_inline_ones(line: Line) -> None:
    """The DACs and wrapped keys come from dacs.lot (one GET a lot); a lot carrying them inline
    (signers before issue #26) builds the very same bytes."""
    lot = await one_lot(line, 3)
    attested, _ = await attest(line, lot)
    assert all(d.dac_cert_b64 == d.dac_key_wrapped == "" for d in attested.devices)
    start = line.store.requests
    from_inline = only(await line.builder.handle(inline(line, attested)), IMAGES_READY)
    objects = dict(line.store.objects)
    between = line.store.requests
    from_lot = only(await line.builder.handle(attested), IMAGES_READY)
    assert [m.model_dump(exclude={"at"}) for m in from_lot] == [
        m.model_dump(exclude={"at"}) for m in from_inline
    ]
    assert line.store.objects == objects  # identical bytes: the write-once PUTs were no-ops
    lot_form = line.store.requests - between
    again = line.store.requests
    await line.builder.handle(inline(line, attested))
    assert lot_form == line.store.requests - again + 1  # one GET more: the lot's dacs.lot
    assert between - start >= 2  # (the first build wrote the lot's two objects)
    # Half of each form is refused: a wrapped key without its DAC, a DAC without its key.
    first, *rest = inline(line, attested).devices
    for update, named in (
        ({"dac_cert_b64": ""}, "dac_cert_b64"),
        ({"dac_key_wrapped": ""}, "dac_key_wrapped"),
    ):
        half = attested.model_copy(update={"devices": [first.model_copy(update=update), *rest]})
        with pytest.raises(InvalidInput, match=rf"devices\[0\]\.{named}"):
            await line.builder.handle(half)


async def test_builder_alarms_on_a_dacs_lot_without_a_wrapped_key(line: Line) -> None:
    lot = await one_lot(line, 2)
    attested, _ = await attest(line, lot)
    key = dacs_key(attested)
    stored = lots.unpack(line.store.objects[key])
    pieces = [
        lots.Piece(
            e.index,
            e.name,
            stored.cut(e),
            {k: v for k, v in e.meta.items() if k != lots.DAC_KEY_META},
        )
        for e in stored.entries
    ]
    line.store.objects[key] = lots.pack(pieces)[0]  # the same pieces, at the same offsets
    with pytest.raises(IntegrityError, match="the DAC of device 0 has no wrapped key"):
        await line.builder.handle(attested)
    body = bytearray(stored.body)
    body[stored.entries[1].offset + 10] ^= 0xFF  # a DAC that is not the bytes its ref names
    line.store.objects[key] = bytes(body)
    with pytest.raises(IntegrityError, match="sha256 differs"):
        await line.builder.handle(attested)


async def test_s3_requests_per_device_through_allocator_signer_and_builder(line: Line) -> None:
    """1,000 factory-nvs devices at 10,000 iterations: ~4/250 requests a device downstream.

    The per-device design made 4 (dac.der; partition.bin, qrcode.png, onboarding.json), lots
    with per-device partitions ~1.1.
    """
    quantity = 1000
    start = line.store.requests
    await line.submit(order(quantity=quantity, commissioning={"iteration_count": 10_000}))
    allocator = line.store.requests - start
    allocated = line.allocated()
    assert [len(lot.devices) for lot in allocated] == [250] * 4  # LOTS_PER_ORDER
    start = line.store.requests
    images = []
    for lot in allocated:
        images.extend((await build_lot(line, lot))[1])
    downstream = line.store.requests - start
    assert len(images) == quantity
    # 4 dacs.lot PUTs and the builder's 4 GETs of them, 4 images.lot + 4 labels.lot (+ the
    # catalogues on first use)
    assert 16 <= downstream <= 20
    assert downstream / quantity < 0.025
    assert (allocator + downstream) / quantity < 0.3, (allocator, downstream)


async def test_assembler_counts_chunks_and_completes_once(line: Line) -> None:
    images = await build_all(line, 3)
    asm = Assembler(line.store)
    for image in images[:2]:
        assert await asm.handle(image) == []
    progress = only(await asm.flush(), ORDER_EVENTS)
    assert [(e.status, e.ready) for e in progress] == [("progress", 2)]
    await asm.handle(images[1])  # a redelivered image counts once
    await asm.handle(images[2])
    done = only(await asm.flush(), ORDER_EVENTS)
    assert [(e.status, e.ready) for e in done] == [("progress", 3), ("completed", 3)]
    manifest = await line.store.get(done[1].manifest.key)
    assert hashlib.sha256(manifest).hexdigest() == done[1].manifest.sha256
    doc = json.loads(manifest)
    assert sorted(d["index"] for d in doc["devices"]) == ["0000000", "0000001", "0000002"]
    assert await asm.handle(images[0]) == []  # after completion: nothing more to say


async def test_a_second_assembler_finishes_from_the_first_ones_chunks(line: Line) -> None:
    images = await build_all(line, 2)
    first, second = Assembler(line.store), Assembler(line.store)
    await first.handle(images[0])
    await first.flush()
    await second.handle(images[1])
    done = only(await second.flush(), ORDER_EVENTS)
    assert [e.status for e in done] == ["progress", "completed"]


async def test_assembler_alarms_when_a_chunk_png_differs_from_its_record(line: Line) -> None:
    (image,) = await build_all(line, 1)
    bad = copy.deepcopy(image.model_dump())
    bad["qrcode_png_b64"] = base64.b64encode(b"not the png").decode()
    asm = Assembler(line.store)
    await asm.handle(ImageReady.model_validate(bad))
    with pytest.raises(IntegrityError, match="sha256 differs"):
        await asm.flush()


async def test_decode_reads_every_message_as_the_careful_path_does(line: Line) -> None:
    """`codec.decode` reads well-formed messages with pydantic's JSON parser in one step: the
    same message as json.loads then validation, for every message a whole order makes; one
    without its `type` still goes the careful way and is refused by name."""
    from matterfab.errors import InvalidInput as Invalid
    from matterfab.messages.codec import decode, decode_json, encode

    await line.submit(order(quantity=3))
    sent = list(line.sent)
    for lot in line.allocated():
        attested, _ = await attest(line, lot)
        sent.extend(await line.builder.handle(attested))
        sent.append(Emit(DEVICES_ATTESTED, lot.lot_id, attested))
    assert {type(e.message).__name__ for e in sent} >= {"LotAllocated", "LotAttested", "ImageReady"}
    for emit in sent:
        model = type(emit.message)
        raw = encode(emit.message)
        assert decode(raw, model) == model.model_validate(decode_json(raw))
        untyped = {k: v for k, v in json.loads(raw).items() if k != "type"}
        with pytest.raises(Invalid, match="type"):
            decode(json.dumps(untyped), model)
