"""QR label images (matterfab.matter.label): decodable, faithful to the symbol, reproducible."""

import hashlib
import struct
import zlib

import pytest
import segno
import zxingcpp  # independent QR decoder (zxing-cpp); a missing install must fail, not skip

from matterfab.errors import InvalidInput
from matterfab.matter import label
from matterfab.matter.label import ERROR_LEVEL, qr_matrix, qr_png, qr_svg

# sha256 prefixes of the default payload rendered with default options (segno 1.6.6).
PNG_SHA256_PREFIX = "98b5588e1d857009"
SVG_SHA256_PREFIX = "5dba5cdc456944b9"

PAYLOADS = ["MT:-24J0AFN00KA0648G00", "MT:KSNK4SIC13-JPR4UY00", "MT:MZWA6G6026O2XP0II00"]


def _png_to_gray(png: bytes) -> tuple[int, int, bytes]:
    """Decode the 1-bit greyscale, non-interlaced PNGs segno writes into 8-bit grey pixels."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        assert (
            zlib.crc32(kind + data)
            == struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])[0]
        )
        if kind == b"IHDR":
            header = struct.unpack(">2I5B", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    assert header is not None
    width, height, depth, color_type, _, _, interlace = header
    assert (depth, color_type, interlace) == (1, 0, 0)
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        filt, data = line[0], line[1:]
        if filt == 2:  # "Up"
            data = bytes((a + b) & 0xFF for a, b in zip(data, prev, strict=True))
        else:
            assert filt == 0
        rows.append(data)
        prev = data
    pixels = bytearray()
    for data in rows:
        bits = "".join(f"{b:08b}" for b in data)[:width]
        pixels += bytes(255 if bit == "1" else 0 for bit in bits)
    return width, height, bytes(pixels)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_png_decodes_back_to_payload(payload):
    width, height, pixels = _png_to_gray(qr_png(payload))
    result = zxingcpp.read_barcode(memoryview(pixels).cast("B", (height, width)))
    assert result is not None, "zxing-cpp found no QR code in the PNG"
    assert result.format == zxingcpp.BarcodeFormat.QRCode
    assert result.text == payload


@pytest.mark.parametrize("payload", PAYLOADS)
def test_png_pixels_match_symbol_matrix(payload):
    scale, border = 3, 2
    width, height, pixels = _png_to_gray(qr_png(payload, scale=scale, border=border))
    expected = segno.make_qr(payload, error=ERROR_LEVEL, boost_error=False).matrix
    size = len(expected)
    assert width == height == (size + 2 * border) * scale
    for y in range(height):
        for x in range(width):
            mx, my = x // scale - border, y // scale - border
            dark = 0 <= mx < size and 0 <= my < size and expected[my][mx] == 1
            assert pixels[y * width + x] == (0 if dark else 255), (x, y)
    assert qr_matrix(payload) == tuple(bytes(r) for r in expected)


def test_error_level_is_m():
    assert segno.make_qr(PAYLOADS[0], error=ERROR_LEVEL, boost_error=False).error == "M"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_outputs_are_reproducible(payload):
    assert qr_png(payload) == qr_png(payload)
    assert qr_svg(payload) == qr_svg(payload)
    # A fresh symbol (not the cached one) renders the same bytes.
    png, svg = qr_png(payload), qr_svg(payload)
    label._symbol.cache_clear()
    assert qr_png(payload) == png
    label._symbol.cache_clear()
    assert qr_svg(payload) == svg


def test_pinned_bytes_for_default_payload():
    # A change here means a rebuild would write different label bytes for an existing device:
    # review the segno upgrade or option change before updating these.
    assert hashlib.sha256(qr_png(PAYLOADS[0])).hexdigest()[:16] == PNG_SHA256_PREFIX
    assert hashlib.sha256(qr_svg(PAYLOADS[0])).hexdigest()[:16] == SVG_SHA256_PREFIX


def test_svg_is_svg_with_requested_size():
    svg = qr_svg(PAYLOADS[0], scale=4, border=2)
    assert svg.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<svg ')
    size = (25 + 4) * 4  # version 2 symbol, 2-module quiet zone each side
    assert f'width="{size}" height="{size}"'.encode() in svg


def test_invalid_payload_or_geometry_rejected():
    with pytest.raises(InvalidInput) as exc:
        qr_png("MT:not-a-payload")
    assert exc.value.field == "qr_payload"
    with pytest.raises(InvalidInput) as exc:
        qr_png(PAYLOADS[0], scale=0)
    assert exc.value.field == "scale"
    with pytest.raises(InvalidInput) as exc:
        qr_svg(PAYLOADS[0], border=-1)
    assert exc.value.field == "border"
