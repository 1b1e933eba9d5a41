"""End to end: a station prints each device's label as it binds it, and `order labels` renders
every label of the order; every label is read back against the manifest.

The printer is a fake raw-ZPL printer on 127.0.0.1 (a free port); the order uses 21-digit
manual codes (flow user-intent) and a 300 dpi layout of its own. PDF and PNG are rasterised
(pdftoppm, Pillow) and decoded with zxing-cpp; the PDF's text is read with pdftotext; ZPL is
checked structurally and its ^GFA graphic decoded.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from matterfab.config import KafkaSettings
from matterfab.labels.layout import group_manual_code, printed_manual_code
from matterfab.messages import STATION_RESULTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.e2e.test_stations import (  # noqa: F401  (stations: a fixture)
    Stations,
    complete_bindings,
    records,
    stations,
    submit,
)
from tests.pipeline import manifest_doc, matterfab, work_order
from tests.unit.test_labels import MANUAL_RE, decode_all, fields, gfa_image, zpl_blocks
from tests.unit.test_station_printing import FakePrinter

pytestmark = pytest.mark.timeout(600)

N = 8
LAYOUT = {"width_mm": 60, "height_mm": 30, "dpi": 300}


def job_fields(job: bytes) -> dict[str, Any]:
    [block] = zpl_blocks(job.decode("ascii"))
    texts = fields(block)
    _, image = gfa_image(block)
    [(_, payload)] = decode_all(image)
    return {
        "payload": payload,
        "serial": next(t[4:] for t in texts if t.startswith("SN: ")),
        "mac": next((t[5:] for t in texts if t.startswith("MAC: ")), None),
        "code": printed_manual_code([t for t in texts if set(t) <= set("0123456789-")]),
    }


async def test_labels_at_the_station_and_for_the_order(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    stations: Stations,  # noqa: F811
    profile: str,
    tmp_path: Path,
) -> None:
    order_id, line = "LBL-ONE", "line-labels"
    printer = FakePrinter()
    address = await printer.start()
    assert not address.endswith(":9100")  # a free port: never a real printer's
    try:
        stations.start(
            "st-lbl",
            line,
            order_id,
            "--out",
            str(tmp_path / "flashed"),
            "--test-mac-prefix",
            "02:bb:01",
            "--print-zpl",
            address,
        )
        await asyncio.to_thread(stations.wait_assigned, ["st-lbl"])
        order = work_order(order_id, N, profile, label=LAYOUT, line=line)
        order["commissioning"]["flow"] = "user-intent"
        await asyncio.to_thread(submit, stack, tmp_path, order)
        bindings = await complete_bindings(store, order_id, N)
        for _ in range(200):
            if len(printer.jobs) >= N and not printer.reading:
                break
            await asyncio.sleep(0.1)
    finally:
        assert printer.server is not None
        printer.server.close()
        await printer.server.wait_closed()

    doc = await manifest_doc(store, order_id)
    rows = sorted(doc["devices"], key=lambda r: r["index"])
    by_serial = {r["serial_num"]: r for r in rows}
    assert all(len(r["manual_code"]) == 21 for r in rows)
    macs = {b["serial_num"]: b["mac"] for b in bindings}

    # The station: exactly one label per bound device, in the order it bound them.
    # At least once: a redelivered image re-publishes its recorded result (and prints nothing).
    results = list(
        {
            r["device_id"]: r
            for r in await records(kafka_settings, STATION_RESULTS, order_id)
            if r["status"] == "flashed"
        }.values()
    )
    assert len(results) == N and all(
        r["label"] == {"status": "printed", "attempts": 1} for r in results
    )
    bind_order = [r["serial_num"] for r in sorted(results, key=lambda r: r["at"])]
    jobs = [job_fields(job) for job in printer.jobs]
    assert [j["serial"] for j in jobs] == bind_order
    for j in jobs:
        row = by_serial[j["serial"]]
        assert j["payload"] == row["qr_payload"]
        assert j["code"] == row["manual_code"]
        assert j["mac"] == macs[j["serial"]].upper()

    # `order labels`: every format, every label read back.
    pdf_path, png_dir, zpl_path = tmp_path / "labels.pdf", tmp_path / "png", tmp_path / "l.zpl"
    for fmt, out in (("pdf", pdf_path), ("png", png_dir), ("zpl", zpl_path)):
        done = await asyncio.to_thread(
            matterfab, stack, "order", "labels", order_id, "--format", fmt, "--out", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"wrote {N} labels of {order_id} to {out}"

    subprocess.run(
        ["pdftoppm", "-r", "300", "-png", str(pdf_path), str(tmp_path / "p")], check=True
    )
    [page] = sorted(tmp_path.glob("p-*.png"))  # 8 labels of 60 x 30 mm: one A4 page
    row_px = LAYOUT["height_mm"] / 25.4 * 300
    found = sorted(decode_all(Image.open(page)), key=lambda f: (round(f[0][0] / row_px), f[0][1]))
    assert [t for _, t in found] == [r["qr_payload"] for r in rows]
    text = subprocess.run(
        ["pdftotext", "-raw", str(pdf_path), "-"], check=True, capture_output=True, text=True
    ).stdout
    printed = [printed_manual_code([a, b]) for a, b in MANUAL_RE.findall(text)]
    assert printed == [r["manual_code"] for r in rows]

    pngs = sorted(png_dir.glob("*.png"))
    assert [p.name for p in pngs] == [f"{r['index']}.png" for r in rows]
    for p, row in zip(pngs, rows, strict=True):
        image = Image.open(p)
        assert image.size == (709, 354)  # 60 x 30 mm at 300 dpi
        [(_, payload)] = decode_all(image)
        assert payload == row["qr_payload"]
        lines = image.text["label:manual_code"].split("\n")
        assert lines == list(group_manual_code(row["manual_code"]))
        assert image.text["label:mac"] == f"MAC: {macs[row['serial_num']].upper()}"

    blocks = zpl_blocks(zpl_path.read_text())
    assert len(blocks) == N
    for block, row in zip(blocks, rows, strict=True):
        labelled = job_fields(f"^XA{block}^XZ\n".encode())
        assert (labelled["payload"], labelled["code"]) == (row["qr_payload"], row["manual_code"])

    # Some devices only; and bad input, one line each.
    done = await asyncio.to_thread(
        matterfab,
        stack,
        "order",
        "labels",
        order_id,
        "--format",
        "zpl",
        "--devices",
        "2-4",
        "--out",
        str(tmp_path / "some.zpl"),
    )
    assert done.returncode == 0, done.stderr
    some = zpl_blocks((tmp_path / "some.zpl").read_text())
    assert [job_fields(f"^XA{b}^XZ\n".encode())["serial"] for b in some] == [
        r["serial_num"] for r in rows[2:5]
    ]
    for args, code, message in [
        (["--format", "svg"], 2, "error: --format: must be one of pdf, zpl, png, not 'svg'"),
        (
            ["--format", "pdf", "--devices", "7-9"],
            2,
            "error: --devices: '7-9' is not within 0-7 (first <= last)",
        ),
    ]:
        done = await asyncio.to_thread(
            matterfab, stack, "order", "labels", order_id, *args, "--out", str(tmp_path / "x")
        )
        assert (done.returncode, done.stderr) == (code, message + "\n")
    done = await asyncio.to_thread(
        matterfab,
        stack,
        "order",
        "labels",
        "LBL-NONE",
        "--format",
        "pdf",
        "--out",
        str(tmp_path / "y"),
    )
    assert done.returncode == 1
    assert done.stderr == "error: order LBL-NONE has no manifest yet (not completed)\n"
