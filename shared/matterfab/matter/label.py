"""QR code label images for the onboarding payload, rendered in memory with segno.

Label images are write-once objects, so the same payload must always give the same bytes:
every choice that could vary is fixed here (error correction level, no boosting, quiet zone,
scale, PNG compression level, SVG options), and segno is pinned. The mask pattern is left to
segno's ISO/IEC 18004 penalty evaluation, which is deterministic.

Speed (one label per device, so it counts): segno's own mask evaluation (ISO/IEC 18004 §7.8.3,
written module by module in Python) took ~2.5 ms of the ~3.5 ms a label cost, and its PNG
writer ~0.8 ms. For the segno version we pin, `_symbol` makes the symbol with mask 0, scores
all eight masks itself with exactly segno's rules and tie-breaking, and re-masks in place;
`qr_png` writes the same PNG bytes segno would. Tests compare both against segno's own output
over thousands of payloads; with any other segno version the code falls back to segno's own
path. A small cache lets a caller that needs both formats for one payload pay for the symbol
once.

The scoring is native (`_qrmask.c`, issue #26): in Python, on whole rows as ints and strings
(`_penalty`, `_best_mask`, kept as the readable reference the tests compare with), it still cost
~0.56-0.60 ms of a label's ~1.14 ms, and the label was a third of the per-device core beside
the PBKDF2's ~1.0 ms. The C scorer applies the same rules to one byte per module in 0.024 ms,
so a label costs ~0.53 ms, most of it segno's mask-0 symbol (numbers in docs/performance.md).
Like the native PBKDF2 it has no slow fallback: `make install` builds it.
"""

from __future__ import annotations

import io
import itertools
import re
import struct
import zlib
from functools import lru_cache

import segno
from segno import encoder as _encoder

from matterfab.errors import invalid
from matterfab.matter.payload import decode_qr

try:
    from matterfab.matter import _qrmask
except ImportError as exc:  # pragma: no cover - an install without the extension
    raise ImportError(
        "matterfab.matter._qrmask (the native QR mask evaluation) is not built: run "
        f"`make install` (pip install -e . compiles it with gcc): {exc}"
    ) from exc

# M (15 % recovery) is what Matter labels commonly use; fixed, so a rebuild cannot change it.
ERROR_LEVEL = "M"
PNG_COMPRESSLEVEL = 9  # as fast as level 1 for these tiny images, and smaller
_FIELD = "qr_payload"


# The fast paths reproduce this segno version's output; any other version uses segno's own code.
_FAST_SEGNO_VERSION = "1.6.6"
_FAST = segno.__version__ == _FAST_SEGNO_VERSION


@lru_cache(maxsize=64)
def _symbol(qr_payload: str) -> segno.QRCode:
    decode_qr(qr_payload)  # never print a label for a payload a commissioner would reject
    # boost_error=False: segno would otherwise raise the level when it fits, which is fine for
    # scanning but makes the level depend on payload length; a fixed level is easier to audit.
    if not _FAST:
        return _make(qr_payload, None)
    # Mask 0 skips segno's evaluation; we then pick the mask segno would have picked.
    qr = _make(qr_payload, 0)
    if qr.is_micro or len(qr.matrix) != len(qr.matrix[0]):  # pragma: no cover - not made here
        return _make(qr_payload, None)
    _remask(qr, _best_mask_native(qr.matrix))
    return qr


def _make(qr_payload: str, mask: int | None) -> segno.QRCode:
    return segno.make_qr(
        qr_payload, error=ERROR_LEVEL, boost_error=False, mode="alphanumeric", mask=mask
    )


# --------------------------------------------------------------------------- mask selection
# ISO/IEC 18004:2015 §7.8.3, as segno 1.6.6 evaluates it (encoder.mask_scores): rows are ints
# with the leftmost module as the most significant bit, or '0'/'1' strings for pattern search.
_RUN = re.compile(r"0{5,}|1{5,}")
_FINDER_LIKE = "1011101"  # dark:light:dark:dark:dark:light:dark (1:1:3:1:1)
_MAX_PENALTY = 1_000_000  # above any score a symbol can have (segno: _MAX_PENALTY_SCORE)


def _row_int(row: bytes | bytearray) -> int:
    return int(bytes(row).translate(_TO_DIGITS), 2)


_TO_DIGITS = bytes.maketrans(b"\x00\x01", b"01")
_FROM_DIGITS = bytes.maketrans(b"01", b"\x00\x01")


@lru_cache(maxsize=8)
def _layout(size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Per symbol size: each row's data-region bits, its other modules while segno scores
    (function patterns; format and version areas still 0), and each mask's bits."""
    # The same function-pattern matrix segno uses to tell the data region (value 0x2) apart;
    # outside the data region it holds exactly what segno's matrix holds during scoring.
    fn = _encoder.make_matrix(size, size)
    _encoder.add_finder_patterns(fn, size, size)
    _encoder.add_alignment_patterns(fn, size, size)
    region = tuple(int("".join("1" if v == 0x2 else "0" for v in row), 2) for row in fn)
    fixed = tuple(int("".join("1" if v == 0x1 else "0" for v in row), 2) for row in fn)
    masks = tuple(
        tuple(
            int("".join("1" if pattern(i, j) else "0" for j in range(size)), 2) & region[i]
            for i in range(size)
        )
        for pattern in _encoder.get_data_mask_functions(False)
    )
    return region, fixed, masks


def _finder_like(line: str, size: int) -> int:
    """N3 of one row or column, with segno's search and light-area rules."""
    count = 0
    idx = line.find(_FINDER_LIKE)
    while idx != -1:
        offset = idx + 7
        if (
            idx in (0, size - 7)
            or "1" not in line[max(idx - 4, 0) : min(idx, size)]
            or "1" not in line[max(offset, 0) : min(offset + 4, size)]
        ):
            count += 40
        else:
            offset = idx + 4  # not enough light around: the next match may overlap
        idx = line.find(_FINDER_LIKE, offset)
    return count


def _transpose(rows: list[int] | tuple[int, ...], size: int) -> list[int]:
    """Columns as ints (top module as the most significant bit) of rows as ints."""
    lines = [format(r, f"0{size}b") for r in rows]
    return [int("".join(c), 2) for c in zip(*lines, strict=True)]


def _penalty(rows: list[int], size: int, cols: list[int] | None = None) -> int:
    """N1 + N2 + N3 + N4 of a masked symbol (format and version areas still blank)."""
    fmt = f"0{size}b"
    lines = [format(r, fmt) for r in rows]
    lines += [format(c, fmt) for c in (cols if cols is not None else _transpose(rows, size))]
    # One pass over every row and column ("|" keeps runs and patterns from spanning lines).
    joined = "|".join(lines)
    runs = _RUN.findall(joined)
    n1 = sum(map(len, runs)) - 2 * len(runs)
    inner = (1 << (size - 1)) - 1  # columns 1..size-1: each compared with its left neighbour
    n2 = 0
    for above, row in itertools.pairwise(rows):
        same = ~(above ^ row) & ~(row ^ (row >> 1)) & ~(above ^ (above >> 1)) & inner
        n2 += 3 * same.bit_count()
    n3 = 0
    if _FINDER_LIKE in joined:  # most lines hold none: search only those that do
        n3 = sum(_finder_like(line, size) for line in lines if _FINDER_LIKE in line)
    dark = sum(r.bit_count() for r in rows)
    n4 = 10 * int(abs(float(dark) / (size**2) * 100 - 50) / 5)
    return n1 + n2 + n3 + n4


def _best_mask(matrix: tuple[bytearray, ...]) -> int:
    """The mask segno's evaluation picks: lowest penalty, the first one on ties.

    The readable reference, in Python; `_symbol` uses `_best_mask_native`, which tests compare
    with this (tests/unit/test_qrmask.py).
    """
    size = len(matrix)
    region, fixed, masks = _layout(size)
    fixed_t, masks_t = _layout_columns(size)
    data = [(_row_int(row) ^ masks[0][i]) & region[i] for i, row in enumerate(matrix)]
    data_t = _transpose(data, size)  # once per symbol, not once per mask
    best, best_score = 0, _MAX_PENALTY
    for number, mask in enumerate(masks):
        mask_t = masks_t[number]
        rows = [fixed[i] | (data[i] ^ mask[i]) for i in range(size)]
        cols = [fixed_t[j] | (data_t[j] ^ mask_t[j]) for j in range(size)]
        score = _penalty(rows, size, cols)
        if score < best_score:
            best, best_score = number, score
    return best


@lru_cache(maxsize=8)
def _layout_columns(size: int) -> tuple[list[int], tuple[list[int], ...]]:
    """`_layout`'s fixed modules and masks as columns."""
    _, fixed, masks = _layout(size)
    return _transpose(fixed, size), tuple(_transpose(m, size) for m in masks)


# The native scorer (_qrmask.c) takes one byte (0 or 1) per module, rows top to bottom. An int
# over such bytes has a bit only at each byte's lowest bit, so & and ^ act module by module: a
# whole symbol's data region is cut out and unmasked in two int operations.
def _module_bytes(rows: tuple[int, ...] | list[int], size: int) -> bytes:
    """Rows as ints (leftmost module most significant) as one byte per module."""
    fmt = f"0{size}b"
    return b"".join(format(r, fmt).encode().translate(_FROM_DIGITS) for r in rows)


@lru_cache(maxsize=8)
def _native_layout(size: int) -> tuple[int, int, bytes, bytes]:
    """`_layout` in the native scorer's form: the data region and mask 0 as ints over module
    bytes (to cut and unmask a symbol's data region in two int operations), the fixed modules
    and the eight masks as module bytes."""
    region, fixed, masks = _layout(size)
    return (
        int.from_bytes(_module_bytes(region, size)),
        int.from_bytes(_module_bytes(masks[0], size)),
        _module_bytes(fixed, size),
        b"".join(_module_bytes(mask, size) for mask in masks),
    )


def _mask_scores(matrix: tuple[bytearray, ...]) -> tuple[int, ...]:
    """The eight masks' penalties of a mask-0 symbol, scored natively (equal to `_penalty`'s)."""
    size = len(matrix)
    region, mask0, fixed, masks = _native_layout(size)
    data = (int.from_bytes(b"".join(matrix)) & region) ^ mask0  # the unmasked data region
    return _qrmask.scores(size, data.to_bytes(size * size), fixed, masks)


def _best_mask_native(matrix: tuple[bytearray, ...]) -> int:
    """`_best_mask`, natively: lowest penalty, the first one on ties."""
    scores = _mask_scores(matrix)
    return scores.index(min(scores))


def _remask(qr: segno.QRCode, mask: int) -> None:
    """Switch a mask-0 symbol to `mask` in place: data modules and format information."""
    if mask == 0:
        return
    size = len(qr.matrix)
    _, _, masks = _layout(size)
    for i, row in enumerate(qr.matrix):
        flipped = _row_int(row) ^ masks[0][i] ^ masks[mask][i]
        row[:] = format(flipped, f"0{size}b").encode().translate(_FROM_DIGITS)
    _encoder.add_format_info(qr.matrix, qr._version, qr._error, mask)
    qr.mask = mask


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
    if _FAST:
        return _png(_symbol(qr_payload).matrix, scale, border)
    out = io.BytesIO()
    _symbol(qr_payload).save(
        out, kind="png", scale=scale, border=border, compresslevel=PNG_COMPRESSLEVEL
    )
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(matrix: tuple[bytearray, ...], scale: int, border: int) -> bytes:
    """The PNG segno 1.6.6 writes for black on white (writers.write_png), built row-wise.

    1-bit greyscale, black = 0; each module row is one filter-0 scanline followed by
    scale - 1 "Up" scanlines of zeros (repeat the line above); quiet-zone rows are filter-0
    white lines; the whole stream is one IDAT at PNG_COMPRESSLEVEL.
    """
    width = (len(matrix) + 2 * border) * scale
    stride = (width + 7) // 8
    pad = "0" * (8 * stride - width)  # unused low bits of the last byte are 0

    def scanline(bits: str) -> bytes:
        return b"\0" + int(bits + pad, 2).to_bytes(stride, "big")

    quiet = "1" * (border * scale)
    pixel = {0: "1" * scale, 1: "0" * scale}  # light module -> white (1), dark -> black (0)
    margin = scanline("1" * width) * (border * scale)
    repeat = (b"\2" + bytes(stride)) * (scale - 1)
    idat = bytearray(margin)
    for row in matrix:
        idat += scanline(quiet + "".join([pixel[m] for m in row]) + quiet)
        idat += repeat
    idat += margin
    header = struct.pack(">2I5B", width, width, 1, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(bytes(idat), PNG_COMPRESSLEVEL)),
            _png_chunk(b"IEND", b""),
        )
    )


def qr_svg(qr_payload: str, scale: int = 4, border: int = 2) -> bytes:
    """Render `qr_payload` as a UTF-8 SVG document, byte-for-byte reproducible."""
    _check_geometry(scale, border)
    out = io.BytesIO()
    _symbol(qr_payload).save(
        out, kind="svg", scale=scale, border=border, xmldecl=True, encoding="utf-8"
    )
    return out.getvalue()
