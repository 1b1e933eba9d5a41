"""The station's end-of-line test (`--eol-cmd`): a failing device is scrapped, its DAC revoked."""

from __future__ import annotations

import json
import sys

from matterfab.fleet import index, keys
from matterfab.messages.base import order_key
from matterfab.objectstore import MemoryObjectStore
from tests.unit.test_station_service import ScriptedFlasher, image, results, station, stored


def _store() -> MemoryObjectStore:
    store = MemoryObjectStore()
    order = {"order_id": "O", "quantity": 10, "attestation_profile": "p"}
    store.objects[order_key("O", "order.json")] = json.dumps(order).encode()
    return store


async def test_failing_end_of_line_test_scraps_the_device() -> None:
    store, msg = _store(), image(3)
    stored(store, msg)
    script = 'import sys; print("RF low on", sys.argv[1]); sys.exit(4)'
    cmd = f"{sys.executable} -c '{script}' {{device_id}}"
    emits = await station(ScriptedFlasher(), store, eol_cmd=cmd).handle(msg)
    assert [r.status for r in results(emits)] == ["flashed"]  # it was flashed, then failed EOL
    view = await index.device_view(store, msg.device_id)
    assert view.state == "scrapped" and view.scrap is not None
    assert view.scrap.station_id == "s1" and "exit 4" in view.scrap.reason
    assert "RF low on O/0000003" in view.scrap.reason
    assert view.dacs[0]["revoked"]["reason"] == "cessationOfOperation"
    assert await store.exists(keys.revocation_key("p", "01"))


async def test_passing_end_of_line_test_changes_nothing() -> None:
    store, msg = _store(), image(4)
    stored(store, msg)
    cmd = f"{sys.executable} -c 'pass' {{serial_num}}"
    emits = await station(ScriptedFlasher(), store, eol_cmd=cmd).handle(msg)
    assert [r.status for r in results(emits)] == ["flashed"]
    assert not await store.exists(keys.scrap_key("O", 4))
