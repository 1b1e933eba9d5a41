"""The label layout a work order declares, the text a label shows, and where everything goes.

A label is a QR code on the left (with its quiet zone) and text lines beside it: the manual
pairing code, the serial number, the MAC once a station knows it, VID/PID. `place` decides
every position once, in printer dots at the layout's resolution (203 or 300 dpi), and each
renderer draws exactly that: a ZPL label, a PNG and a label on a PDF sheet line up.

Sizing rules, so a phone camera reads the code at label size: the QR code gets the largest
whole number of dots per module that fits the label's height and leaves room for the widest
text line, and never less than `min_module_mm` (0.25 mm by default: a version-2 symbol of
25 modules plus a 4-module quiet zone is then at least 8.3 mm wide). A layout that cannot
hold its QR code or its text raises one InvalidInput naming the field to change.

Manual codes are grouped as esp-matter-mfg-tool prints them (reference §"commissioning
flow"): 11 digits `DDDD-DDD-DDDD`, 21 digits on two lines `DDDD-DDD-DDDD` / `DDDD-DDD-DD-D`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from matterfab.errors import FieldError, InvalidInput, invalid
from matterfab.matter.label import qr_matrix

MM_PER_INCH = 25.4
LINE_PITCH = 1.25  # a text line's height as a multiple of its font size
TEXT_GAP_EM = 0.5  # space between the QR code's quiet zone and the text, in font sizes
PLACEHOLDER_MAC = "DD:DD:DD:DD:DD:DD"  # the widest MAC: the text never moves once it is known
SAMPLE_QR = "MT:-24J0AFN00KA0648G00"  # every MT: payload of ours is 22 chars: same symbol size

Dpi = Literal[203, 300]
TextField = Literal["manual_code", "serial_num", "mac", "vid_pid"]
TEXT_FIELDS: tuple[TextField, ...] = ("manual_code", "serial_num", "mac", "vid_pid")


class LabelLayout(BaseModel):
    """A label's size, resolution and contents (work order `label`; defaults: 50 x 25 mm)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    width_mm: float = Field(50.0, ge=10, le=200, description="Label width, mm")
    height_mm: float = Field(25.0, ge=10, le=200, description="Label height, mm")
    dpi: Dpi = Field(203, description="Printer resolution: 203 or 300 dots per inch")
    margin_mm: float = Field(1.0, ge=0, le=20, description="Blank border inside the label, mm")
    quiet_zone: int = Field(4, ge=2, le=10, description="Light modules around the QR code")
    min_module_mm: float = Field(
        0.25, ge=0.1, le=2.0, description="Smallest QR module a camera must read, mm"
    )
    text_mm: float = Field(2.0, ge=1.2, le=12, description="Font size of the text lines, mm")
    fields: list[TextField] = Field(
        default_factory=lambda: list(TEXT_FIELDS),
        description="Text lines beside the QR code, top to bottom",
    )
    zpl_qr: Literal["graphic", "native"] = Field(
        "graphic",
        description="ZPL QR code: our symbol as a ^GFA graphic, or the printer's own ^BQN",
    )

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a field")
        return v

    def dots(self, mm: float) -> int:
        """Millimetres as whole printer dots at this layout's resolution."""
        return round(mm * self.dpi / MM_PER_INCH)

    def mm(self, dots: float) -> float:
        """Printer dots as millimetres."""
        return dots * MM_PER_INCH / self.dpi


@dataclass(frozen=True)
class LabelContent:
    """What one device's label shows (from a manifest row or an ImageReady)."""

    qr_payload: str
    manual_code: str
    serial_num: str
    vendor_id: int
    product_id: int
    mac: str | None = None

    @classmethod
    def from_record(cls, row: Mapping[str, Any], mac: str | None = None) -> LabelContent:
        """From a manifest.json device entry (or any mapping with the record's fields)."""
        return cls(
            qr_payload=str(row["qr_payload"]),
            manual_code=str(row["manual_code"]),
            serial_num=str(row["serial_num"]),
            vendor_id=int(row["vendor_id"]),
            product_id=int(row["product_id"]),
            mac=mac,
        )


def group_manual_code(code: str) -> tuple[str, ...]:
    """The manual code as printed: 11 digits `1234-567-8901`, 21 digits on two lines."""
    if not code.isdigit() or len(code) not in (11, 21):
        raise invalid("manual_code", "must be 11 or 21 decimal digits")
    first = f"{code[:4]}-{code[4:7]}-{code[7:11]}"
    if len(code) == 11:
        return (first,)
    return (first, f"{code[11:15]}-{code[15:18]}-{code[18:20]}-{code[20]}")


def printed_manual_code(lines: list[str] | tuple[str, ...]) -> str:
    """The digits of a printed manual code (its grouped lines): inverse of group_manual_code."""
    return "".join(ch for line in lines for ch in line if ch.isdigit())


@dataclass(frozen=True)
class Line:
    """One text line: which field, its text (None: not known yet), where, how big (dots)."""

    field: str
    text: str | None
    x: int
    y: int  # top of the text
    size: int  # font size (em height)


@dataclass(frozen=True)
class Placement:
    """Where everything of one label goes, in dots from the label's top-left corner."""

    layout: LabelLayout
    content: LabelContent
    width: int
    height: int
    matrix: tuple[bytes, ...]  # the QR symbol's modules (1 dark), without quiet zone
    module: int  # dots per module
    qr_x: int  # top-left of the symbol (inside its quiet zone)
    qr_y: int
    lines: tuple[Line, ...]

    @property
    def modules(self) -> int:
        """Modules per side of the symbol."""
        return len(self.matrix)

    @property
    def quiet(self) -> int:
        """Quiet zone width in dots."""
        return self.layout.quiet_zone * self.module

    @property
    def qr_side(self) -> int:
        """Side of the symbol in dots, without quiet zone."""
        return self.modules * self.module


def text_lines(layout: LabelLayout, content: LabelContent) -> list[tuple[str, str | None]]:
    """(field, text) per line, in the layout's order; the MAC is None until it is known."""
    lines: list[tuple[str, str | None]] = []
    for name in layout.fields:
        if name == "manual_code":
            lines += [("manual_code", part) for part in group_manual_code(content.manual_code)]
        elif name == "serial_num":
            lines.append(("serial_num", f"SN: {content.serial_num}"))
        elif name == "mac":
            lines.append(("mac", f"MAC: {content.mac.upper()}" if content.mac else None))
        else:
            lines.append(
                ("vid_pid", f"VID: {content.vendor_id:04X}  PID: {content.product_id:04X}")
            )
    for field, text in lines:
        if text is not None and not (text.isascii() and text.isprintable()):
            raise invalid(field, f"{text!r} cannot be printed: labels take printable ASCII")
    return lines


# Helvetica's advance widths (1/1000 em) of printable ASCII, " " to "~": the PDF core font's
# metrics (fpdf2's table, checked equal in tests). Written here so that placing a label, which
# stations and the allocator do, never imports fpdf2 (3 s on this host).
# fmt: off
_WIDTHS = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)
# fmt: on
HELVETICA_WIDTHS = dict(zip((chr(c) for c in range(32, 127)), _WIDTHS, strict=True))


def text_width(text: str, size: float) -> float:
    """Width of `text` set in Helvetica at `size` (any unit): the widths every format fits."""
    return sum(HELVETICA_WIDTHS.get(ch, 1000) for ch in text) * size / 1000


def place(layout: LabelLayout, content: LabelContent) -> Placement:
    """Place the QR code and text lines; InvalidInput naming the field when they do not fit."""
    width, height = layout.dots(layout.width_mm), layout.dots(layout.height_mm)
    margin = layout.dots(layout.margin_mm)
    inner_w, inner_h = width - 2 * margin, height - 2 * margin
    matrix = qr_matrix(content.qr_payload)
    block_modules = len(matrix) + 2 * layout.quiet_zone
    min_module = max(1, math.ceil(layout.min_module_mm * layout.dpi / MM_PER_INCH - 1e-9))
    lines = text_lines(layout, content)
    size = layout.dots(layout.text_mm)
    pitch = round(size * LINE_PITCH)
    text_h = pitch * len(lines)
    mm = layout.mm
    if inner_h // block_modules < min_module:
        raise invalid(
            "label.height_mm",
            f"a QR code of {len(matrix)} modules and a {layout.quiet_zone}-module quiet zone at "
            f"{layout.min_module_mm:g} mm per module needs {mm(block_modules * min_module):.1f} mm "
            f"of height; {layout.height_mm:g} mm less margins leaves {mm(inner_h):.1f} mm",
        )
    if text_h > inner_h:
        raise invalid(
            "label.height_mm",
            f"{len(lines)} text lines of {layout.text_mm:g} mm need {mm(text_h):.1f} mm; "
            f"{layout.height_mm:g} mm less margins leaves {mm(inner_h):.1f} mm (lower "
            "label.text_mm or drop label.fields)",
        )
    # The MAC is measured at its widest, so the text never moves once a station knows it.
    measured = [PLACEHOLDER_MAC_LINE if name == "mac" else (text or "") for name, text in lines]
    widest = max(measured, key=lambda t: text_width(t, size), default="")
    text_w = math.ceil(text_width(widest, size))
    gap = round(size * TEXT_GAP_EM) if lines else 0
    module = min(inner_h // block_modules, (inner_w - text_w - gap) // block_modules)
    if module < min_module:
        raise invalid(
            "label.width_mm",
            f"the line {widest!r} needs {mm(text_w):.1f} mm beside a QR code of at least "
            f"{mm(block_modules * min_module):.1f} mm; {layout.width_mm:g} mm less margins "
            f"leaves {mm(inner_w):.1f} mm (widen the label or lower label.text_mm)",
        )
    block = block_modules * module
    block_x, block_y = margin, margin + (inner_h - block) // 2
    text_x = block_x + block + gap
    top = margin + (inner_h - text_h) // 2
    placed = tuple(
        Line(name, text, text_x, top + i * pitch + (pitch - size) // 2, size)
        for i, (name, text) in enumerate(lines)
    )
    quiet = layout.quiet_zone * module
    return Placement(
        layout=layout,
        content=content,
        width=width,
        height=height,
        matrix=matrix,
        module=module,
        qr_x=block_x + quiet,
        qr_y=block_y + quiet,
        lines=placed,
    )


PLACEHOLDER_MAC_LINE = f"MAC: {PLACEHOLDER_MAC}"


def fit_errors(
    layout: LabelLayout, *, long_code: bool = False, serial_num: str = "0000000000"
) -> list[FieldError]:
    """Why `layout` cannot hold a typical label of an order (empty: it fits).

    `long_code`: the order's manual codes have 21 digits; `serial_num`: its longest serial.
    """
    sample = LabelContent(
        qr_payload=SAMPLE_QR,
        manual_code="1" * (21 if long_code else 11),
        serial_num=serial_num,
        vendor_id=0xFFF1,
        product_id=0x8000,
    )
    try:
        place(layout, sample)
    except InvalidInput as exc:
        return exc.errors
    return []
