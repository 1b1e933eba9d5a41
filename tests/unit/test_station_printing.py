"""Labels printed at the station: to a fake ZPL printer on 127.0.0.1, or with a command.

The station's handler runs with an in-memory bucket and a scripted flasher (as in
test_station_service.py); the printer is a real TCP server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from matterfab.errors import InvalidInput
from matterfab.labels.layout import Placement
from matterfab.messages.codec import decode
from matterfab.messages.station import StationResult, station_record_key
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.station import printing
from matterfab.services.station.config import load_settings
from matterfab.services.station.printing import LabelPrinting, PrintFailed, ZplPrinter
from matterfab.services.station.service import Station
from tests.unit.test_station_service import ScriptedFlasher, image, results, stored


class FakePrinter:
    """A raw-ZPL printer on 127.0.0.1: every connection's bytes, in arrival order."""

    def __init__(self) -> None:
        self.jobs: list[bytes] = []  # in the order the connections came
        self.reading = 0
        self.server: asyncio.Server | None = None

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slot = len(self.jobs)
        self.jobs.append(b"")
        self.reading += 1
        try:
            self.jobs[slot] = await reader.read()
        finally:
            self.reading -= 1
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._take, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def settled(self) -> list[bytes]:
        """The jobs, once every connection has been read to its end."""
        for _ in range(500):
            if not self.reading:
                break
            await asyncio.sleep(0.01)
        return self.jobs


@pytest.fixture
async def printer() -> AsyncIterator[tuple[FakePrinter, str]]:
    fake = FakePrinter()
    address = await fake.start()
    try:
        yield fake, address
    finally:
        assert fake.server is not None
        fake.server.close()
        await fake.server.wait_closed()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def station(store: MemoryObjectStore, labels: LabelPrinting | None, **kw: Any) -> Station:
    settings = load_settings(station_id="s1", line="L", out="/unused", backoff=0, **kw)
    return Station(settings, store, ScriptedFlasher(), printing=labels)  # type: ignore[arg-type]


async def test_one_label_per_flashed_device_in_order(printer: tuple[FakePrinter, str]) -> None:
    fake, address = printer
    store = MemoryObjectStore()
    store.objects["orders/O/order.json"] = json.dumps({"label": {"dpi": 300}}).encode()
    labels = LabelPrinting(store, ZplPrinter(address, 5.0))
    st = station(store, labels)
    msgs = [image(i) for i in (3, 1, 2)]
    for msg in msgs:
        stored(store, msg)
        [res] = results(await st.handle(msg))
        assert res.status == "flashed" and res.label is not None
        assert (res.label.status, res.label.attempts, res.label.reason) == ("printed", 1, None)
        assert decode(store.objects[station_record_key("O", msg.index)], StationResult) == res
    # A redelivered image re-publishes its record: no second label.
    results(await st.handle(msgs[0]))
    jobs = await fake.settled()
    assert len(jobs) == 3
    for job, msg in zip(jobs, msgs, strict=True):
        text = job.decode("ascii")
        assert text.startswith("^XA\n") and text.endswith("^XZ\n") and text.count("^XA") == 1
        assert "^PW591" in text  # 50 mm at 300 dpi: the order's layout
        assert f"^FDSN: {msg.serial_num}^FS" in text
        assert f"^FDMAC: 02:00:00:00:00:{msg.index:02X}^FS" in text  # the MAC just read
        assert "^FD3497-011-2332^FS" in text and text.count("^GFA,") == 1


async def test_a_refused_connection_is_retried_then_reported_with_the_flash() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    port = closed_port()
    labels = LabelPrinting(store, ZplPrinter(f"127.0.0.1:{port}", 2.0), attempts=3, backoff=0)
    [res] = results(await station(store, labels).handle(msg))
    assert (res.status, res.mac) == ("flashed", "02:00:00:00:00:07")  # the flash stands
    assert res.label is not None
    assert (res.label.status, res.label.attempts) == ("failed", 3)
    assert res.label.reason == f"printer 127.0.0.1:{port} refused the connection"
    assert decode(store.objects[station_record_key("O", 7)], StationResult) == res


class FlakyPrinter:
    """Fails the first `failures` labels, then takes them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.printed: list[str] = []

    async def print_label(self, label: Placement, device_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise PrintFailed("out of labels")
        self.printed.append(device_id)


async def test_a_print_that_fails_once_is_retried() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    flaky = FlakyPrinter(1)
    [res] = results(await station(store, LabelPrinting(store, flaky, backoff=0)).handle(msg))
    assert res.label is not None and (res.label.status, res.label.attempts) == ("printed", 2)
    assert flaky.printed == [msg.device_id]


async def test_a_layout_that_does_not_fit_is_reported_not_raised() -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    store.objects["orders/O/order.json"] = json.dumps({"label": {"width_mm": 20}}).encode()
    flaky = FlakyPrinter(0)
    [res] = results(await station(store, LabelPrinting(store, flaky)).handle(msg))
    assert res.status == "flashed" and res.label is not None
    assert (res.label.status, res.label.attempts) == ("failed", 0)
    assert (res.label.reason or "").startswith("label.width_mm: the line ")
    assert flaky.printed == []


COPY_LABELS = """
import pathlib, shutil, sys
out = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True)
for name, path in zip(("zpl", "png", "pdf"), sys.argv[2:5]):
    shutil.copy(path, out / ("label." + name))
(out / "args").write_text(" ".join(sys.argv[5:]))
"""


async def test_print_command_gets_the_label_files(tmp_path: Path) -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    script = tmp_path / "copy.py"
    script.write_text(COPY_LABELS)
    out = tmp_path / "out"
    template = (
        f"{sys.executable} {script} {out} {{label_zpl}} {{label_png}} {{label_pdf}} "
        "{device_id} {serial_num} {mac}"
    )
    settings = load_settings(station_id="s1", line="L", out="/unused", print_cmd=template)
    labels = printing.from_settings(settings, store)
    assert labels is not None
    [res] = results(await station(store, labels).handle(msg))
    assert res.label is not None and res.label.status == "printed"
    assert (out / "args").read_text() == "O/0000007 SN7 02:00:00:00:00:07"
    assert (out / "label.zpl").read_text().startswith("^XA")
    png = Image.open(io.BytesIO((out / "label.png").read_bytes()))
    [found] = zxingcpp.read_barcodes(png.convert("L"))
    assert found.text == msg.qr_payload
    pdf = (out / "label.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Count 1" in pdf
    # One page the size of the label (50 x 25 mm = 141.73 x 70.87 pt).
    assert re.search(rb"/MediaBox \[0 0 141\.7\d* 70\.8\d*\]", pdf)


async def test_a_failing_print_command_is_one_line(tmp_path: Path) -> None:
    store, msg = MemoryObjectStore(), image()
    stored(store, msg)
    template = f"{sys.executable} -c \"import sys; print('jam'); print('door open'); sys.exit(3)\""
    settings = load_settings(station_id="s1", line="L", out="/unused", print_cmd=template)
    labels = printing.from_settings(settings, store)
    assert labels is not None
    labels.backoff = 0
    [res] = results(await station(store, labels).handle(msg))
    assert res.label is not None and res.label.reason == "print command exited 3: 'jam door open'"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"print_zpl": "printer"}, "print_zpl: must be HOST:PORT"),
        ({"print_zpl": "10.0.0.7:99999"}, "print_zpl: must be HOST:PORT"),
        ({"print_cmd": "lp {label}"}, "print_cmd: unknown placeholder {label}"),
        ({"print_cmd": "lp 'open"}, "print_cmd: must split into arguments"),
        (
            {"print_zpl": "127.0.0.1:9100", "print_cmd": "lp {label_pdf}"},
            "give at most one of print_zpl",
        ),
    ],
)
def test_bad_print_settings_name_the_setting(options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        load_settings(station_id="s1", line="L", out="/unused", **options)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
