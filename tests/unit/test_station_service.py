"""The station's per-image decisions, with an in-memory bucket and a scripted flasher."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from matterfab.errors import IntegrityError
from matterfab.messages import IMAGES_READY, STATION_RESULTS, ImageReady, StationResult
from matterfab.messages.codec import decode, encode
from matterfab.messages.station import station_record_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.runtime import Emit
from matterfab.services.station.config import StationSettings, load_settings
from matterfab.services.station.service import (
    CommandFlasher,
    FlashFailed,
    FolderFlasher,
    Station,
)

PARTITION = b"\xff" * 0x6000


def image(index: int = 7, requeues: int = 0, data: bytes = PARTITION) -> ImageReady:
    ref = {"key": f"orders/O/devices/{index:07d}/x", "sha256": "0" * 64, "size": 1}
    part = {
        "key": f"orders/O/devices/{index:07d}/partition.bin",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    return ImageReady.model_validate(
        {
            "order_id": "O",
            "device_id": f"O/{index:07d}",
            "index": index,
            "quantity": 10,
            "vendor_id": 0xFFF1,
            "product_id": 0x8000,
            "serial_num": f"SN{index}",
            "discriminator": 1,
            "qr_payload": "MT:Y.K9042C00KA0648G00",
            "manual_code": "34970112332",
            "dac_serial": "01",
            "objects": {"partition": part, "qrcode": ref, "onboarding": ref, "dac": ref},
            "requeues": requeues,
        }
    )


class ScriptedFlasher:
    """Fails the first `failures` calls, then returns a MAC."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.calls = 0

    async def flash(self, msg: ImageReady, partition: bytes, keys: bytes | None) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise FlashFailed(f"no chip (call {self.calls})")
        return f"02:00:00:00:00:{msg.index:02x}"


def station(flasher: Any, store: MemoryObjectStore, **kw: Any) -> Station:
    settings = load_settings(station_id="s1", line="L", out="/unused", backoff=0, **kw)
    return Station(settings, store, flasher, random.Random(1))  # type: ignore[arg-type]


def stored(store: MemoryObjectStore, msg: ImageReady) -> None:
    store.objects[msg.objects.partition.key] = PARTITION


def results(emits: list[Emit]) -> list[StationResult]:
    return [e.message for e in emits if e.topic == STATION_RESULTS]  # type: ignore[misc]


async def test_flashed_is_recorded_then_published() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    emits = await station(ScriptedFlasher(1), store).handle(msg)
    [res] = results(emits)
    assert (res.status, res.mac, res.attempts, res.final) == (
        "flashed",
        "02:00:00:00:00:07",
        2,
        True,
    )
    assert emits[0].key == msg.device_id and len(emits) == 1
    assert decode(store.objects[station_record_key("O", 7)], StationResult) == res


async def test_redelivered_image_is_not_flashed_again() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    first = results(await station(ScriptedFlasher(), store).handle(msg))
    flasher = ScriptedFlasher()
    again = results(await station(flasher, store).handle(msg))
    assert flasher.calls == 0 and again == first


async def test_failure_requeues_the_image_with_a_count() -> None:
    store, msg = MemoryObjectStore(), image(requeues=1)
    stored(store, msg)
    emits = await station(ScriptedFlasher(99), store, max_attempts=3, max_requeues=3).handle(msg)
    [res] = results(emits)
    assert (res.status, res.final, res.attempts, res.requeues) == ("failed", False, 3, 1)
    assert "no chip (call 3)" in (res.reason or "")
    [back] = [e for e in emits if e.topic == IMAGES_READY]
    assert isinstance(back.message, ImageReady) and back.message.requeues == 2
    assert back.key == msg.device_id
    assert station_record_key("O", 7) not in store.objects


async def test_failure_after_the_last_requeue_is_final() -> None:
    store, msg = MemoryObjectStore(), image(requeues=2)
    stored(store, msg)
    emits = await station(ScriptedFlasher(99), store, max_attempts=1, max_requeues=2).handle(msg)
    [res] = results(emits)
    assert (res.status, res.final, res.requeues) == ("failed", True, 2)
    assert len(emits) == 1
    assert decode(store.objects[station_record_key("O", 7)], StationResult) == res


async def test_corrupt_image_fails_for_good_without_flashing() -> None:
    store, msg = MemoryObjectStore(), image()
    store.objects[msg.objects.partition.key] = PARTITION[:-1] + b"\x00"
    flasher = ScriptedFlasher()
    [res] = results(await station(flasher, store).handle(msg))
    assert flasher.calls == 0
    assert (res.status, res.final) == ("failed", True) and "sha256" in (res.reason or "")


async def test_other_orders_are_skipped() -> None:
    store, msg = MemoryObjectStore(), image()
    flasher = ScriptedFlasher()
    assert await station(flasher, store, order="OTHER").handle(msg) == []
    assert flasher.calls == 0


async def test_fail_rate_one_always_fails() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    flasher = ScriptedFlasher()
    emits = await station(flasher, store, fail_rate=1.0, max_attempts=2).handle(msg)
    assert flasher.calls == 0
    assert "injected failure" in (results(emits)[0].reason or "")


async def test_a_second_board_with_the_same_image_is_an_alarm() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    other = StationResult(
        order_id="O",
        device_id=msg.device_id,
        index=7,
        serial_num="SN7",
        station_id="s2",
        line="L",
        status="flashed",
        mac="02:00:00:00:00:99",
    )
    s = station(ScriptedFlasher(), store)
    # The race: the record appears after this station's check but before its own write.
    real_get = store.get_or_none

    async def racing_get(key: str) -> bytes | None:
        found = await real_get(key)
        if key == station_record_key("O", 7):
            store.objects[key] = encode(other)
        return found

    store.get_or_none = racing_get  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match="flashed twice"):
        await s.handle(msg)


async def test_folder_flasher_writes_files(tmp_path: Path) -> None:
    msg = image(index=3)
    mac = await FolderFlasher(tmp_path, "02:aa:01").flash(msg, b"part", b"keys")
    assert mac == "02:aa:01:00:00:03"
    assert (tmp_path / "O" / "0000003" / "partition.bin").read_bytes() == b"part"
    assert (tmp_path / "O" / "0000003" / "nvs_keys.bin").read_bytes() == b"keys"


def command_settings(cmd: str, **kw: Any) -> StationSettings:
    return load_settings(station_id="s1", line="L", flash_cmd=cmd, **kw)


async def test_command_flasher_reads_the_mac() -> None:
    script = 'test -s "$0" && echo "$1" && echo MAC: AA:BB:CC:DD:EE:FF'
    cmd = f"sh -c '{script}' {{partition}} {{serial_num}}"
    flasher = CommandFlasher(command_settings(cmd))
    assert await flasher.flash(image(), PARTITION, None) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        ("sh -c 'echo boom; exit 3'", "exited 3: 'boom'"),
        ("sh -c 'echo done'", "no MAC in the flash output"),
        ("sleep 5", "timed out after 0.3s"),
        ("/no/such/tool {partition}", "cannot run /no/such/tool"),
        ("flash {keys}", "{keys} has no value"),
    ],
)
async def test_command_flasher_failures(cmd: str, reason: str) -> None:
    flasher = CommandFlasher(command_settings(cmd, timeout=0.3))
    with pytest.raises(FlashFailed) as exc:
        await flasher.flash(image(), PARTITION, None)
    assert reason in str(exc.value)


def test_the_station_runs_the_runtime_loop_with_its_own_membership() -> None:
    """No station copy of the loop: a plain ServiceSpec says what its consumer needs."""
    from matterfab.services.station import main as station_main

    st = station(ScriptedFlasher(), MemoryObjectStore())
    spec = station_main.spec_for(st)
    s = st.settings
    assert spec.group_id == s.group_id and spec.topic == IMAGES_READY
    assert spec.leave_on_stop is True  # the others take its partitions at once (issue #27)
    assert spec.consumer_options["session_timeout_ms"] <= 30_000  # Kafka's expiry bound
    assert spec.listener is not None
    poll_ms = spec.consumer_options["max_poll_interval_ms"]
    assert poll_ms >= s.batch * s.worst_case_s * 1000
    assert station_main.instance_id(s) == f"station-{s.station_id}"


async def test_a_device_key_image_is_not_flashed_by_a_station_that_cannot_bind_keys() -> None:
    import json

    store = MemoryObjectStore()
    store.objects["orders/O/order.json"] = json.dumps({"dac_storage": "device-key"}).encode()
    msg = image()
    stored(store, msg)
    flasher = ScriptedFlasher()
    emits = await station(flasher, store).handle(msg)
    (result,) = results(emits)
    assert flasher.calls == 0  # the board is not touched: its key could not be bound here
    assert (result.status, result.final) == ("failed", False)
    assert result.reason == (
        "order is dac_storage device-key: this station has no --csr-cmd and --cert-cmd"
    )
    assert [e.topic for e in emits] == [STATION_RESULTS, IMAGES_READY]  # back to the line
