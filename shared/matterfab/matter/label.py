"""QR code label images for the onboarding payload, rendered in memory with segno.

Label images are write-once objects, so the same payload must always give the same bytes:
every choice that could vary is fixed here (error correction level, no boosting, quiet zone,
scale, PNG compression level, SVG options), and segno is pinned. The mask pattern is left to
segno's ISO/IEC 18004 penalty evaluation, which is deterministic.

Cost (see the helper report): making the symbol dominates (mask evaluation, ~2.5 ms);
serialising adds ~0.8 ms for PNG and ~0.4 ms for SVG. A small cache lets a caller that needs
both formats for one payload pay for the symbol once.
"""

from __future__ import annotations

import io
from functools import lru_cache

import segno

from matterfab.errors import invalid
from matterfab.matter.payload import decode_qr

# M (15 % recovery) is what Matter labels commonly use; fixed, so a rebuild cannot change it.
ERROR_LEVEL = "M"
PNG_COMPRESSLEVEL = 9  # as fast as level 1 for these tiny images, and smaller
_FIELD = "qr_payload"


@lru_cache(maxsize=64)
def _symbol(qr_payload: str) -> segno.QRCode:
    decode_qr(qr_payload)  # never print a label for a payload a commissioner would reject
    # boost_error=False: segno would otherwise raise the level when it fits, which is fine for
    # scanning but makes the level depend on payload length; a fixed level is easier to audit.
    return segno.make_qr(qr_payload, error=ERROR_LEVEL, boost_error=False, mode="alphanumeric")


def _check_geometry(scale: int, border: int) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 64:
        raise invalid("scale", "must be an integer in 1..64 (pixels per module)")
    if not isinstance(border, int) or isinstance(border, bool) or not 0 <= border <= 16:
        raise invalid("border", "must be an integer in 0..16 (modules of quiet zone)")


def qr_matrix(qr_payload: str) -> tuple[bytes, ...]:
    """The module matrix of the label's QR symbol (rows of 0/1 dark), without quiet zone."""
    # Copies: the cached symbol's rows are mutable bytearrays.
    return tuple(bytes(row) for row in _symbol(qr_payload).matrix)


def qr_png(qr_payload: str, scale: int = 4, border: int = 2) -> bytes:
    """Render `qr_payload` as a 1-bit greyscale PNG, byte-for-byte reproducible."""
    _check_geometry(scale, border)
    out = io.BytesIO()
    _symbol(qr_payload).save(
        out, kind="png", scale=scale, border=border, compresslevel=PNG_COMPRESSLEVEL
    )
    return out.getvalue()


def qr_svg(qr_payload: str, scale: int = 4, border: int = 2) -> bytes:
    """Render `qr_payload` as a UTF-8 SVG document, byte-for-byte reproducible."""
    _check_geometry(scale, border)
    out = io.BytesIO()
    _symbol(qr_payload).save(
        out, kind="svg", scale=scale, border=border, xmldecl=True, encoding="utf-8"
    )
    return out.getvalue()
