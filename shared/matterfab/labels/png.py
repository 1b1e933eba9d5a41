"""One label as a 1-bit PNG at the printer's resolution (Pillow), for any printer or a preview.

Pixels are printer dots: the image is `width_mm` by `height_mm` at the layout's dpi (recorded
in the PNG's pHYs chunk, so a print dialog keeps the size). Text is set in Pillow's built-in
scalable font (no system fonts needed); a line that would run past the margin in that font is
set a little smaller. The printed text of each field is also stored in the PNG's text chunks
(`label:<field>`), so a program can check what a label says without reading pixels.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from matterfab.labels.layout import Placement

TEXT_KEY = "label:{}"  # PNG text chunk per field: what the label prints for it
WHITE, BLACK = 1, 0


def qr_runs(row: bytes) -> list[tuple[int, int]]:
    """(first module, modules) of every run of dark modules in a row of the symbol."""
    runs, start = [], None
    for x, dark in enumerate([*row, 0]):
        if dark and start is None:
            start = x
        elif not dark and start is not None:
            runs.append((start, x - start))
            start = None
    return runs


def render(p: Placement) -> bytes:
    """The label as PNG bytes."""
    image = Image.new("1", (p.width, p.height), WHITE)
    draw = ImageDraw.Draw(image)
    m = p.module
    for y, row in enumerate(p.matrix):
        for x, n in qr_runs(row):
            left, top = p.qr_x + x * m, p.qr_y + y * m
            draw.rectangle((left, top, left + n * m - 1, top + m - 1), fill=BLACK)
    margin = p.layout.dots(p.layout.margin_mm)
    texts: dict[str, list[str]] = {}
    for line in p.lines:
        if line.text is None:
            continue
        font = ImageFont.load_default(size=line.size)
        room = p.width - margin - line.x
        length = font.getlength(line.text)
        if length > room:
            font = ImageFont.load_default(size=max(1, int(line.size * room / length)))
        draw.text((line.x, line.y), line.text, font=font, fill=BLACK)
        texts.setdefault(line.field, []).append(line.text)
    info = PngInfo()
    for field, lines in texts.items():
        info.add_text(TEXT_KEY.format(field), "\n".join(lines))
    info.add_text(TEXT_KEY.format("qr_payload"), p.content.qr_payload)
    out = io.BytesIO()
    image.save(out, "PNG", dpi=(p.layout.dpi, p.layout.dpi), pnginfo=info)
    return out.getvalue()
