"""The services' handlers driven directly, on the in-memory store: fast checks of behaviour.

The real-stack tests (tests/e2e, tests/reliability) prove the wiring; these pin what each
handler decides: rejection, idempotent redelivery, adoption of an issued DAC, the integrity
alarm, chunk counting and completion.
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

from matterfab import profiles
from matterfab.errors import IntegrityError
from matterfab.keywrap import KeyWrapper
from matterfab.matter import nvs_reader
from matterfab.messages import (
    DAC_LEDGER,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    DeviceAllocated,
    DeviceAttested,
    ImageReady,
    OrderEvent,
)
from matterfab.messages.base import device_key, order_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.allocator.service import Allocator, parse_submission
from matterfab.services.assembler.service import Assembler
from matterfab.services.builder.service import Builder
from matterfab.services.signer.service import META_KEY, Signer

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
    allocator: Allocator
    signer: Signer
    builder: Builder
    sent: list[Emit] = field(default_factory=list)

    async def submit(self, doc: dict[str, Any]) -> list[OrderEvent]:
        """The allocator's handling of one work order: its order events, in order."""
        self.sent.clear()
        last = await self.allocator.handle(parse_submission(json.dumps(doc).encode()))
        events = [e for e in [*self.sent, *last] if e.topic == ORDER_EVENTS]
        return [e.message for e in events]  # type: ignore[misc]

    def allocated(self) -> list[DeviceAllocated]:
        return [e.message for e in self.sent if e.topic == DEVICES_ALLOCATED]  # type: ignore[misc]


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("handlers", VID, PID, profiles_dir=path)
    return path


@pytest.fixture
async def line(profile_dir: Path) -> Line:
    store = MemoryObjectStore()
    wrapper = KeyWrapper(os.urandom(32))
    signer = Signer(store, wrapper, profiles_dir=profile_dir)
    await signer.publish_profiles()
    built = Line(store, None, signer, Builder(store, wrapper, None))  # type: ignore[arg-type]

    async def send(emits: Sequence[Emit]) -> None:
        built.sent.extend(emits)

    built.allocator = Allocator(store, wrapper, send)
    return built


def only(emits: Sequence[Emit], topic: str) -> list[Any]:
    return [e.message for e in emits if e.topic == topic]


# -- allocator ---------------------------------------------------------------------------


async def test_allocator_accepts_and_allocates_every_device(line: Line) -> None:
    events = await line.submit(order(quantity=4))
    assert [e.status for e in events] == ["accepted"]
    devices = line.allocated()
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert len({d.serial_num for d in devices}) == 4
    assert len({d.discriminator for d in devices}) == 4
    assert await line.store.exists(order_key("HANDLER-1", "order.json"))


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
    a = line.allocated()
    await line.submit(order("HANDLER-B", quantity=3))
    b = line.allocated()
    assert not {d.serial_num for d in a} & {d.serial_num for d in b}
    assert not {d.discriminator for d in a} & {d.discriminator for d in b}


# -- signer ------------------------------------------------------------------------------


async def attest(line: Line, msg: DeviceAllocated) -> tuple[DeviceAttested, Any]:
    emits = await line.signer.handle(msg)
    (attested,) = only(emits, DEVICES_ATTESTED)
    (entry,) = only(emits, DAC_LEDGER)
    return attested, entry


async def test_signer_issues_one_dac_and_a_redelivery_adopts_it(line: Line) -> None:
    await line.submit(order(quantity=1))
    (msg,) = line.allocated()
    first, entry = await attest(line, msg)
    again, _ = await attest(line, msg)
    assert again.dac_serial == first.dac_serial == entry.dac_serial
    assert again.dac_key_wrapped == first.dac_key_wrapped
    stored, meta = await line.store.get_with_metadata(device_key(msg.order_id, 0, "dac.der"))
    assert base64.b64decode(first.dac_cert_b64) == stored
    assert meta[META_KEY] == first.dac_key_wrapped
    cert = x509.load_der_x509_certificate(stored)
    assert entry.dac_sha256 == hashlib.sha256(stored).hexdigest()
    assert cert.serial_number == int(first.dac_serial, 16)


async def test_signer_racing_instances_announce_one_dac(line: Line) -> None:
    await line.submit(order(quantity=1))
    (msg,) = line.allocated()
    results = await asyncio.gather(*(attest(line, msg) for _ in range(4)))
    assert len({a.dac_serial for a, _ in results}) == 1


async def test_signer_alarms_on_a_dac_without_its_wrapped_key(line: Line) -> None:
    await line.submit(order(quantity=1))
    (msg,) = line.allocated()
    await line.store.put_once(device_key(msg.order_id, 0, "dac.der"), b"not adoptable")
    with pytest.raises(IntegrityError, match="without its wrapped key"):
        await line.signer.handle(msg)


# -- builder and assembler -----------------------------------------------------------------


async def build_all(line: Line, quantity: int) -> list[ImageReady]:
    await line.submit(order(quantity=quantity))
    ready = []
    for msg in line.allocated():
        attested, _ = await attest(line, msg)
        (image,) = only(await line.builder.handle(attested), IMAGES_READY)
        ready.append(image)
    return ready


async def test_builder_stores_what_it_announces(line: Line) -> None:
    (image,) = await build_all(line, 1)
    for name, ref in image.objects.model_dump(exclude_none=True).items():
        data = await line.store.get(ref["key"])
        assert hashlib.sha256(data).hexdigest() == ref["sha256"], name
        assert len(data) == ref["size"], name
    onboarding_json = await line.store.get(image.objects.onboarding.key)
    assert onboarding_json == image.record().to_json()  # one record: the file and the message
    onboarding = json.loads(onboarding_json)
    assert onboarding["qr_payload"] == image.qr_payload
    assert onboarding["serial_num"] == image.serial_num
    partition = await line.store.get(image.objects.partition.key)
    factory = nvs_reader.decode_partition(partition)["chip-factory"]
    assert factory["serial-num"] == ("string", image.serial_num)


async def test_builder_redelivery_is_a_no_op_and_tampering_alarms(line: Line) -> None:
    await line.submit(order(quantity=1))
    (msg,) = line.allocated()
    attested, _ = await attest(line, msg)
    first = only(await line.builder.handle(attested), IMAGES_READY)[0]
    again = only(await line.builder.handle(attested), IMAGES_READY)[0]
    # A rebuild draws nothing new: same partition bytes, so write-once accepts it.
    assert again.objects.partition == first.objects.partition
    line.store.objects[first.objects.partition.key] = b"tampered"
    with pytest.raises(IntegrityError, match="different content"):
        await line.builder.handle(attested)


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
