"""Device labels (matterfab.labels): every format read back by independent tools.

PNG and PDF are rasterised (Pillow for the PNG, poppler's pdftoppm for the PDF) and their QR
codes decoded with zxing-cpp; the PDF's text is read with poppler's pdftotext; ZPL is parsed
structurally and its ^GFA graphic decoded back into pixels for zxing-cpp. The payloads and
codes are the shared onboarding vectors (11- and 21-digit manual codes).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zxingcpp  # a missing install must fail, not skip
from PIL import Image

from matterfab.cli.labels import load, parse_devices, read_layout, write
from matterfab.errors import InvalidInput, MatterfabError
from matterfab.labels import pdf, png, zpl
from matterfab.labels.layout import (
    HELVETICA_WIDTHS,
    LabelContent,
    LabelLayout,
    group_manual_code,
    place,
    printed_manual_code,
    text_width,
)
from matterfab.objectstore import MemoryObjectStore
from matterfab.services.allocator.service import parse_submission
from tests.vectors_path import vectors_dir

VECTORS = json.loads((vectors_dir() / "onboarding.json").read_text())["setup_payload"]
CONTENTS = [
    LabelContent(
        qr_payload=v["qr"],
        manual_code=v["manual"],
        serial_num=f"SN-{i:06d}",
        vendor_id=v["vid"],
        product_id=v["pid"],
        mac=f"02:aa:00:00:00:{i:02x}" if i % 2 else None,
    )
    for i, v in enumerate(VECTORS)
]
LAYOUTS = {
    "default-203": LabelLayout(),
    "small-300": LabelLayout(width_mm=40, height_mm=20, dpi=300, text_mm=1.6),
    "tall-203": LabelLayout(width_mm=60, height_mm=40, text_mm=3.0, quiet_zone=2),
}
CLI = [sys.executable, "-m", "matterfab.cli.main"]
MANUAL_RE = re.compile(r"\b(\d{4}-\d{3}-\d{4})\b(?:\s+(\d{4}-\d{3}-\d{2}-\d)\b)?")


def decode_all(image: Image.Image) -> list[tuple[tuple[int, int], str]]:
    """((row, column) of the top-left corner, text) of every QR code zxing-cpp finds."""
    found = zxingcpp.read_barcodes(image.convert("L"), formats=zxingcpp.BarcodeFormat.QRCode)
    return [((r.position.top_left.y, r.position.top_left.x), r.text) for r in found]


def test_vectors_cover_both_manual_code_lengths() -> None:
    assert {len(c.manual_code) for c in CONTENTS} == {11, 21}


def test_text_widths_are_the_pdf_core_fonts() -> None:
    from fpdf.fonts import CORE_FONTS_CHARWIDTHS

    assert HELVETICA_WIDTHS == {
        chr(c): CORE_FONTS_CHARWIDTHS["helvetica"][chr(c)] for c in range(32, 127)
    }


def test_manual_code_grouped_as_mfg_tool_prints_it() -> None:
    # esp-matter-mfg-tool 1.0.29 (../shared/reference): cf=0 and cf=1 with passcode 20202021.
    assert group_manual_code("34970112332") == ("3497-011-2332",)
    assert group_manual_code("749701123365522328010") == ("7497-011-2336", "5522-328-01-0")
    assert printed_manual_code(("7497-011-2336", "5522-328-01-0")) == "749701123365522328010"
    with pytest.raises(InvalidInput, match="manual_code: must be 11 or 21"):
        group_manual_code("1234")


@pytest.mark.parametrize("name", LAYOUTS)
def test_placement_keeps_everything_on_the_label(name: str) -> None:
    layout = LAYOUTS[name]
    for content in CONTENTS:
        p = place(layout, content)
        assert (p.width, p.height) == (layout.dots(layout.width_mm), layout.dots(layout.height_mm))
        assert layout.mm(p.module) >= layout.min_module_mm
        margin = layout.dots(layout.margin_mm)
        assert p.qr_x - p.quiet >= margin and p.qr_y - p.quiet >= margin
        assert p.qr_y + p.qr_side + p.quiet <= p.height - margin
        for line in p.lines:
            assert line.x >= p.qr_x + p.qr_side + p.quiet  # never over the quiet zone
            assert line.y >= margin and line.y + line.size <= p.height - margin
            if line.text is not None:
                assert line.x + text_width(line.text, line.size) <= p.width - margin


@pytest.mark.parametrize("name", LAYOUTS)
def test_png_labels_read_back(name: str) -> None:
    layout = LAYOUTS[name]
    for content in CONTENTS:
        image = Image.open(io.BytesIO(png.render(place(layout, content))))
        assert image.size == (layout.dots(layout.width_mm), layout.dots(layout.height_mm))
        assert round(image.info["dpi"][0]) == layout.dpi
        [(_, text)] = decode_all(image)
        assert text == content.qr_payload
        printed = image.text["label:manual_code"].split("\n")
        assert printed == list(group_manual_code(content.manual_code))
        assert printed_manual_code(printed) == content.manual_code
        assert image.text["label:serial_num"] == f"SN: {content.serial_num}"
        assert image.text.get("label:mac") == (
            f"MAC: {content.mac.upper()}" if content.mac else None
        )
        assert image.text["label:vid_pid"] == (
            f"VID: {content.vendor_id:04X}  PID: {content.product_id:04X}"
        )
        # Ink where the text lines are: the text is drawn, not only recorded.
        p = place(layout, content)
        for line in p.lines:
            box = image.crop((line.x, line.y, p.width, line.y + line.size)).convert("L")
            assert (box.getextrema()[0] == 0) == (line.text is not None)


@pytest.mark.parametrize(("paper", "crop_marks"), [("a4", True), ("letter", False)])
def test_pdf_sheets_read_back(tmp_path: Path, paper: str, crop_marks: bool) -> None:
    layout = LAYOUTS["default-203"]
    contents = CONTENTS * 4  # 36 labels: more than one A4 or Letter page of 50 x 25 mm
    sheet = pdf.Sheet(paper=paper, crop_marks=crop_marks)  # type: ignore[arg-type]
    g = pdf.grid(layout, sheet)
    assert g.per_page < len(contents)
    path = tmp_path / "labels.pdf"
    path.write_bytes(pdf.render([place(layout, c) for c in contents], sheet))
    subprocess.run(["pdftoppm", "-r", "300", "-png", str(path), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == -(-len(contents) // g.per_page)
    decoded: list[str] = []
    for page in pages:
        found = decode_all(Image.open(page))
        # Row-major order on the page: rows are label-height apart, so sort by (row, column).
        row_px = layout.height_mm / 25.4 * 300
        decoded += [t for _, t in sorted(found, key=lambda f: (round(f[0][0] / row_px), f[0][1]))]
    assert decoded == [c.qr_payload for c in contents]
    text = subprocess.run(
        ["pdftotext", "-raw", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    printed = [printed_manual_code([a, b or ""]) for a, b in MANUAL_RE.findall(text)]
    assert printed == [c.manual_code for c in contents]
    assert text.count("SN: SN-") == len(contents)
    info = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True, text=True)
    w_pt, h_pt = map(
        float, re.search(r"Page size:\s+([\d.]+) x ([\d.]+) pts", info.stdout).groups()
    )  # type: ignore[union-attr]
    assert (round(w_pt / 72 * 25.4, 1), round(h_pt / 72 * 25.4, 1)) == pdf.PAPERS[paper]


def zpl_blocks(job: str) -> list[str]:
    blocks = re.findall(r"\^XA(.*?)\^XZ", job, flags=re.S)
    assert "".join(f"^XA{b}^XZ\n" for b in blocks) == job  # nothing outside the blocks
    return blocks


def gfa_image(block: str) -> tuple[tuple[int, int], Image.Image]:
    """The ^GFA graphic of a ZPL label as an image (black = 1 bits), with its ^FO origin."""
    m = re.search(r"\^FO(\d+),(\d+)\^GFA,(\d+),(\d+),(\d+),([0-9A-F]+)\^FS", block)
    assert m, block
    total, field, row_bytes, data = int(m[3]), int(m[4]), int(m[5]), m[6]
    assert total == field == len(data) // 2 and len(data) % (2 * row_bytes) == 0
    rows = len(data) // (2 * row_bytes)
    raw = bytes.fromhex(data)
    image = Image.frombytes("1", (row_bytes * 8, rows), bytes(b ^ 0xFF for b in raw))
    # Pad with white so the decoder sees a quiet zone wider than the printed one.
    canvas = Image.new("L", (row_bytes * 8 + 40, rows + 40), 255)
    canvas.paste(image.convert("L"), (20, 20))
    return (int(m[1]), int(m[2])), canvas


def fields(block: str) -> list[str]:
    """Every text field of a label, ^FH escapes undone."""
    out = []
    for text in re.findall(r"\^A0N,\d+,\d+\^FH_\^FD(.*?)\^FS", block):
        out.append(re.sub(r"_([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text))
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_zpl_labels_are_well_formed_and_their_graphic_reads_back(name: str) -> None:
    layout = LAYOUTS[name]
    placements = [place(layout, c) for c in CONTENTS]
    job = zpl.render_all(placements)
    assert job.isascii()
    blocks = zpl_blocks(job)
    assert len(blocks) == len(CONTENTS)
    for block, p, content in zip(blocks, placements, CONTENTS, strict=True):
        assert f"^PW{p.width}" in block and f"^LL{p.height}" in block
        assert block.count("^GF") == 1 and "^BQ" not in block
        assert block.count("^FO") == block.count("^FS")
        (x, y), image = gfa_image(block)
        assert (x, y) == (p.qr_x - p.quiet, p.qr_y - p.quiet)
        [(_, text)] = decode_all(image)
        assert text == content.qr_payload
        texts = fields(block)
        code_lines = [t for t in texts if re.fullmatch(r"[0-9-]+", t)]
        assert code_lines == list(group_manual_code(content.manual_code))
        assert printed_manual_code(code_lines) == content.manual_code
        assert f"SN: {content.serial_num}" in texts
        macs = [t for t in texts if t.startswith("MAC: ")]
        assert macs == ([f"MAC: {content.mac.upper()}"] if content.mac else [])
        assert f"VID: {content.vendor_id:04X}  PID: {content.product_id:04X}" in texts


def test_zpl_native_qr_and_escaped_text() -> None:
    layout = LabelLayout(zpl_qr="native", dpi=300)
    content = LabelContent(CONTENTS[0].qr_payload, CONTENTS[0].manual_code, "A^B~C_D", 1, 2)
    p = place(layout, content)
    [block] = zpl_blocks(zpl.render(p))
    assert block.count("^BQN,2,") == 1 and "^GF" not in block
    magnification = int(re.search(r"\^BQN,2,(\d+)", block)[1])  # type: ignore[index]
    assert magnification == min(p.module, 10)
    assert f"^FDMA,{content.qr_payload}^FS" in block
    assert "SN: A^B~C_D" in fields(block)
    assert "A^B" not in block and "~C" not in block  # a raw ^ or ~ would start a command


@pytest.mark.parametrize(
    ("layout", "field", "message"),
    [
        (LabelLayout(width_mm=30, height_mm=15), "label.width_mm", "the line 'MAC: DD:"),
        (LabelLayout(height_mm=12, text_mm=3), "label.height_mm", "4 text lines of 3 mm need"),
        (LabelLayout(height_mm=10, min_module_mm=0.5), "label.height_mm", "a QR code of 25"),
    ],
)
def test_a_layout_that_does_not_fit_names_the_field(
    layout: LabelLayout, field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        place(layout, CONTENTS[0])
    [error] = err.value.errors
    assert error.field == field and error.message.startswith(message)
    assert "\n" not in str(err.value)


def test_sheet_too_small_for_the_label_and_unprintable_text() -> None:
    with pytest.raises(
        InvalidInput, match=r"^label.width_mm: a 195 mm label does not fit a page of a4 "
    ):
        pdf.grid(LabelLayout(width_mm=195, height_mm=30), pdf.Sheet())
    content = LabelContent(CONTENTS[0].qr_payload, CONTENTS[0].manual_code, "Nº1", 1, 2)
    with pytest.raises(InvalidInput, match="serial_num: 'SN: Nº1' cannot be printed"):
        place(LabelLayout(), content)


def work_order(label: dict[str, object], flow: str = "standard") -> bytes:
    return json.dumps(
        {
            "type": "work-order/v1",
            "order_id": "WO-LABEL",
            "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
            "quantity": 3,
            "mfg_date": "2026-11-21",
            "attestation_profile": "p",
            "commissioning": {"flow": flow},
            "serial": {"prefix": "ACME-LONG-PREFIX-", "start": 1, "digits": 8},
            "label": label,
        }
    ).encode()


def test_work_order_label_checked_at_submission() -> None:
    assert parse_submission(work_order({"width_mm": 70, "height_mm": 30})).errors == []
    [error] = parse_submission(work_order({"width_mm": 40, "height_mm": 30})).errors
    assert error.field == "label.width_mm"
    assert "SN: ACME-LONG-PREFIX-0000000" in error.message  # the order's longest serial
    [error] = parse_submission(work_order({"dpi": 600})).errors
    assert (error.field, error.message) == ("label.dpi", "must be one of 203 or 300")
    [error] = parse_submission(work_order({"fields": ["mac", "mac"]})).errors
    assert error.field == "label.fields"
    # 21-digit codes take a second line: a label that holds 4 lines may not hold 5.
    tight = {"width_mm": 70, "height_mm": 14, "text_mm": 2.2}
    assert parse_submission(work_order(tight)).errors == []
    [error] = parse_submission(work_order(tight, flow="user-intent")).errors
    assert error.field == "label.height_mm" and error.message.startswith("5 text lines")


def test_device_ranges() -> None:
    assert parse_devices(None, 3) == [0, 1, 2]
    assert parse_devices("0-2, 7,5", 10) == [0, 1, 2, 5, 7]
    for bad, message in [("3-1", "'3-1' is not within"), ("x", "'x' is not an index")]:
        with pytest.raises(InvalidInput, match=f"--devices: {message}"):
            parse_devices(bad, 10)
    with pytest.raises(InvalidInput, match="--devices: '10' is not within 0-9"):
        parse_devices("10", 10)


def test_unknown_format_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "order", "labels", "WO-1", "--format", "bmp", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "error: --format: must be one of pdf, zpl, png, not 'bmp'\n"


async def test_order_labels_read_manifest_layout_and_bindings(tmp_path: Path) -> None:
    store = MemoryObjectStore()
    rows = [
        {
            "index": f"{i:07d}",
            "device_id": f"O/{i:07d}",
            "serial_num": c.serial_num,
            "vendor_id": c.vendor_id,
            "product_id": c.product_id,
            "qr_payload": c.qr_payload,
            "manual_code": c.manual_code,
        }
        for i, c in enumerate(CONTENTS)
    ]
    store.objects["orders/O/manifest.json"] = json.dumps({"devices": rows}).encode()
    store.objects["orders/O/order.json"] = json.dumps({"label": {"dpi": 300}}).encode()
    store.objects["orders/O/bindings.csv"] = (
        b"device_id,serial_num,station_id,mac,flashed_at\n"
        b"O/0000001,SN-000001,s1,02:aa:bb:cc:dd:ee,2026-11-21T10:00:00+00:00\n"
    )
    labels = await load(store, "O", "0-2")
    assert labels.layout == LabelLayout(dpi=300)
    assert [(i, c.serial_num, c.mac) for i, c in labels.devices] == [
        (0, "SN-000000", None),
        (1, "SN-000001", "02:aa:bb:cc:dd:ee"),
        (2, "SN-000002", None),
    ]
    assert write(labels, "png", tmp_path / "png", pdf.Sheet()) == 3
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "0000000.png",
        "0000001.png",
        "0000002.png",
    ]
    with pytest.raises(MatterfabError, match="order P has no manifest yet"):
        await load(store, "P", None)

    # --layout: other label stock than the order's, checked like the order's.
    (tmp_path / "stock.json").write_text('{"width_mm": 70, "height_mm": 35}')
    other = await load(store, "O", "4", read_layout(tmp_path / "stock.json"))
    assert (other.layout.width_mm, other.layout.dpi) == (70, 203)
    (tmp_path / "bad.json").write_text('{"width_mm": 70, "dpi": 600}')
    with pytest.raises(InvalidInput, match=r"^label.dpi: must be one of 203 or 300$"):
        read_layout(tmp_path / "bad.json")
    with pytest.raises(InvalidInput, match=r"^--layout: cannot read "):
        read_layout(tmp_path / "missing.json")
