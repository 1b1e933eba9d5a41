"""Labels on PDF sheets for office printers (fpdf2): A4 or Letter, a grid, crop marks optional.

Each label is drawn from its placement (dots converted to millimetres), so a sheet label is the
thermal label at the same size: QR modules as filled vector rectangles (sharp at any zoom or
printer resolution), text in the PDF core font Helvetica (selectable, so `pdftotext` reads the
manual code back). The grid is centred on the page with at least PAGE_MARGIN_MM all round;
crop marks are short lines in that margin along every column and row edge, to cut along.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from matterfab.errors import invalid
from matterfab.labels.layout import LabelLayout, Placement
from matterfab.labels.png import qr_runs

if TYPE_CHECKING:
    from fpdf import FPDF

Paper = Literal["a4", "letter", "label"]  # label: one label per page of its own size
PAPERS: dict[str, tuple[float, float]] = {"a4": (210.0, 297.0), "letter": (215.9, 279.4)}
PAGE_MARGIN_MM = 10.0  # office printers cannot print to the edge; room for the crop marks
CROP_MARK_MM = 5.0
CROP_OFFSET_MM = 1.5  # crop marks stop short of the labels
PT_PER_MM = 72 / 25.4
ASCENT = 0.78  # Helvetica's cap height is ~0.72 em: the text's top sits at its line's top
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # a fixed creation date: same labels, same bytes


@dataclass(frozen=True)
class Sheet:
    """How labels are laid out on paper."""

    paper: Paper = "a4"
    gap_mm: float = 2.0
    crop_marks: bool = False


@dataclass(frozen=True)
class Grid:
    """Columns and rows of labels on a page, and the top-left corner of the first."""

    columns: int
    rows: int
    left: float
    top: float
    pitch_x: float
    pitch_y: float

    @property
    def per_page(self) -> int:
        """Labels on one page."""
        return self.columns * self.rows


def grid(layout: LabelLayout, sheet: Sheet) -> Grid:
    """The grid of `layout` labels on `sheet`; InvalidInput if not even one fits."""
    w, h, gap = layout.width_mm, layout.height_mm, sheet.gap_mm
    if sheet.paper == "label":
        return Grid(1, 1, 0.0, 0.0, w, h)
    page_w, page_h = PAPERS[sheet.paper]
    columns = math.floor((page_w - 2 * PAGE_MARGIN_MM + gap) / (w + gap) + 1e-9)
    rows = math.floor((page_h - 2 * PAGE_MARGIN_MM + gap) / (h + gap) + 1e-9)
    for field, count, size in (("label.width_mm", columns, w), ("label.height_mm", rows, h)):
        if count < 1:
            raise invalid(
                field,
                f"a {size:g} mm label does not fit a page of {sheet.paper} with "
                f"{PAGE_MARGIN_MM:g} mm margins",
            )
    used_w, used_h = columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap
    return Grid(columns, rows, (page_w - used_w) / 2, (page_h - used_h) / 2, w + gap, h + gap)


def render(placements: Sequence[Placement], sheet: Sheet) -> bytes:
    """A PDF of every label, in order, left to right and top to bottom, page after page."""
    from fpdf import FPDF  # late: a station that prints ZPL never loads fpdf2

    if not placements:
        raise invalid("devices", "no labels to put on a sheet")
    layout = placements[0].layout
    g = grid(layout, sheet)
    page = (layout.width_mm, layout.height_mm) if sheet.paper == "label" else sheet.paper
    pdf = FPDF(unit="mm", format=page)
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    pdf.set_creation_date(EPOCH)
    pdf.set_title("matterfab labels")
    pdf.set_fill_color(0, 0, 0)
    for i, p in enumerate(placements):
        slot = i % g.per_page
        if slot == 0:
            pdf.add_page()
            if sheet.crop_marks and sheet.paper != "label":
                _crop_marks(pdf, g, layout)
        left = g.left + (slot % g.columns) * g.pitch_x
        top = g.top + (slot // g.columns) * g.pitch_y
        _label(pdf, p, left, top)
    return bytes(pdf.output())


def _label(pdf: FPDF, p: Placement, left: float, top: float) -> None:
    mm = p.layout.mm
    m = mm(p.module)
    for y, row in enumerate(p.matrix):
        for x, n in qr_runs(row):
            x_mm, y_mm = left + mm(p.qr_x) + x * m, top + mm(p.qr_y) + y * m
            pdf.rect(x_mm, y_mm, n * m, m, style="F")
    for line in p.lines:
        if line.text is None:
            continue
        size = mm(line.size)
        pdf.set_font("helvetica", size=size * PT_PER_MM)
        pdf.text(left + mm(line.x), top + mm(line.y) + ASCENT * size, line.text)


def _crop_marks(pdf: FPDF, g: Grid, layout: LabelLayout) -> None:
    pdf.set_line_width(0.1)
    right = g.left + (g.columns - 1) * g.pitch_x + layout.width_mm
    bottom = g.top + (g.rows - 1) * g.pitch_y + layout.height_mm
    for c in range(g.columns):
        for x in (g.left + c * g.pitch_x, g.left + c * g.pitch_x + layout.width_mm):
            pdf.line(x, g.top - CROP_OFFSET_MM - CROP_MARK_MM, x, g.top - CROP_OFFSET_MM)
            pdf.line(x, bottom + CROP_OFFSET_MM, x, bottom + CROP_OFFSET_MM + CROP_MARK_MM)
    for r in range(g.rows):
        for y in (g.top + r * g.pitch_y, g.top + r * g.pitch_y + layout.height_mm):
            pdf.line(g.left - CROP_OFFSET_MM - CROP_MARK_MM, y, g.left - CROP_OFFSET_MM, y)
            pdf.line(right + CROP_OFFSET_MM, y, right + CROP_OFFSET_MM + CROP_MARK_MM, y)
