"""ZPL II for Zebra-compatible thermal printers: plain text, one `^XA` … `^XZ` per label.

The QR code is either our own symbol (the same modules as the PNG and the PDF, quiet zone
included) as one uncompressed `^GFA` graphic, or the printer's `^BQN` (model 2, error level M,
magnification = the placed module size, at most 10). Text uses the printer's scalable font 0
with `^FH` hex escapes, so a serial number holding `^` or `~` cannot end a field early.
UTF-8 (`^CI28`); labels take printable ASCII anyway (`layout.text_lines`).
"""

from __future__ import annotations

from collections.abc import Iterable

from matterfab.labels.layout import Placement
from matterfab.matter.label import ERROR_LEVEL

MAX_MAGNIFICATION = 10  # ^BQ's largest module, in dots
_ESCAPE = "_"  # ^FH's escape character: `_5E` is "^"


def _escape(text: str) -> str:
    return "".join(f"{_ESCAPE}{ord(ch):02X}" if ch in "^~_" else ch for ch in text)


def qr_graphic(p: Placement) -> tuple[int, str]:
    """(bytes per row, hex rows) of the QR code with its quiet zone: ^GFA's data, 1 = black."""
    side = p.qr_side + 2 * p.quiet
    row_bytes = (side + 7) // 8
    quiet_row = "00" * row_bytes
    rows = [quiet_row] * p.quiet
    pad = "0" * (8 * row_bytes - side)
    for modules in p.matrix:
        bits = "0" * p.quiet
        bits += "".join(("1" if m else "0") * p.module for m in modules)
        bits += "0" * p.quiet + pad
        row = f"{int(bits, 2):0{2 * row_bytes}X}"
        rows += [row] * p.module
    rows += [quiet_row] * p.quiet
    return row_bytes, "".join(rows)


def render(p: Placement) -> str:
    """One label as a ZPL `^XA` … `^XZ` block (lines end with "\\n")."""
    out = ["^XA", "^CI28", f"^PW{p.width}", f"^LL{p.height}", "^LH0,0"]
    if p.layout.zpl_qr == "graphic":
        row_bytes, data = qr_graphic(p)
        total = len(data) // 2
        out.append(
            f"^FO{p.qr_x - p.quiet},{p.qr_y - p.quiet}^GFA,{total},{total},{row_bytes},{data}^FS"
        )
    else:
        magnification = min(p.module, MAX_MAGNIFICATION)
        out.append(
            f"^FO{p.qr_x},{p.qr_y}^BQN,2,{magnification}^FD{ERROR_LEVEL}A,{p.content.qr_payload}^FS"
        )
    for line in p.lines:
        if line.text is None:
            continue
        out.append(
            f"^FO{line.x},{line.y}^A0N,{line.size},{line.size}^FH{_ESCAPE}"
            f"^FD{_escape(line.text)}^FS"
        )
    out.append("^XZ")
    return "\n".join(out) + "\n"


def render_all(placements: Iterable[Placement]) -> str:
    """Every label, one block after another: one print job."""
    return "".join(render(p) for p in placements)
