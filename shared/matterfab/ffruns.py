"""ff-runs/1: a flash image with its long runs of 0xFF elided (erased flash reads 0xFF).

A `partition.bin` is ~91 % 0xFF (empty NVS entries and pages): one 24,576-byte factory-nvs
partition measured 22,339 bytes of 0xFF, and only 2,350 bytes outside its 13 runs of at least
16. The builder elides those runs before sealing, so what the bucket stores, and the S3 server
writes and serves, shrinks ~10x (docs/secrets.md, issue #26).

Format: a sequence of segments, nothing before, between or after them::

    segment = count (4 bytes, big-endian)    0xFF bytes to write
              length (4 bytes, big-endian)   L, literal bytes that follow
              literal (L bytes)              written as they are, after the 0xFF bytes

The decoded image is every segment's 0xFF bytes then its literal, in order. `encode` elides
every run of at least `MIN_RUN` 0xFF bytes (a shorter run stays in a literal: a segment's 8-byte
header would eat most of what it saves) and writes no empty segment; the empty image is no
segments. `decode` is told the size to rebuild (the ref's plaintext size): it allocates that
size, never what a segment claims, and refuses anything else — a truncated segment, an empty
one, a segment that runs past `size`, bytes after the image is complete, or an image that ends
short — so a small body can never claim a large image.

Why not zlib: sealing is deterministic, so a redelivered lot rebuilds byte-identical write-once
objects on whichever builder takes it. Deflate's output is not pinned across implementations
(zlib and zlib-ng, which distributions and Python builds now ship, compress the same input to
different bytes), so a mixed fleet would raise an IntegrityError on a redelivery. The images are
0xFF-padded flash, which this elides almost as well: the partition above is 1,908 bytes with
`zlib.compress(level=1)` (zlib 1.2.13) and 2,462 in ff-runs/1, a format fixed here and decoded
in a few lines, with no library version in the way.
"""

from __future__ import annotations

import struct

NAME = "ff-runs/1"  # the encoding's name in a sealed object's header
MIN_RUN = 16  # shortest run of 0xFF that is elided (fixed: encode must stay deterministic)
_SEGMENT = struct.Struct(">II")  # count of 0xFF bytes, literal length
# Runs are found in a copy where 0xFF is 0 and every other byte 1, by `bytes.find` (memchr
# speed): 20 us a 24 KB partition, against 35 us for re's `\xff{16,}`, whose repeat walks the
# runs byte by byte.
_MARK = bytes(0 if b == 0xFF else 1 for b in range(256))
_ERASED = bytes(MIN_RUN)  # MIN_RUN bytes of 0xFF, marked


class MalformedRuns(ValueError):
    """An ff-runs/1 body that does not decode to the size asked for; the message says why."""


def encode(data: bytes) -> bytes:
    """`data` with every run of at least MIN_RUN 0xFF bytes elided (deterministic)."""
    marked = data.translate(_MARK)
    parts: list[bytes] = []
    run = 0  # the 0xFF bytes that open the next segment
    pos = 0
    while (start := marked.find(_ERASED, pos)) >= 0:
        end = marked.find(b"\x01", start + MIN_RUN)
        end = len(data) if end < 0 else end
        if run or start > pos:
            parts += (_SEGMENT.pack(run, start - pos), data[pos:start])
        run, pos = end - start, end
    if run or pos < len(data):
        parts += (_SEGMENT.pack(run, len(data) - pos), data[pos:])
    return b"".join(parts)


def decode(body: bytes, size: int) -> bytes:
    """The `size`-byte image that `body` encodes; MalformedRuns unless it is exactly that."""
    out = bytearray(b"\xff") * size
    pos = 0  # in the image
    at = 0  # in the body
    while at < len(body):
        if pos == size:
            raise MalformedRuns(f"{len(body) - at} trailing bytes after the {size}-byte image")
        if len(body) - at < _SEGMENT.size:
            raise MalformedRuns(f"truncated segment header at byte {at}")
        run, length = _SEGMENT.unpack_from(body, at)
        at += _SEGMENT.size
        if run == 0 and length == 0:
            raise MalformedRuns(f"empty segment at byte {at - _SEGMENT.size}")
        if run + length > size - pos:
            raise MalformedRuns(
                f"segment at byte {at - _SEGMENT.size} runs past the {size}-byte image "
                f"({run} + {length} bytes at offset {pos})"
            )
        if length > len(body) - at:
            raise MalformedRuns(f"truncated literal at byte {at}: {length} bytes announced")
        pos += run  # already 0xFF
        out[pos : pos + length] = body[at : at + length]
        pos += length
        at += length
    if pos != size:
        raise MalformedRuns(f"decodes to {pos} bytes, not {size}")
    return bytes(out)


def decoded_size(body: bytes, limit: int) -> int:
    """The size of the image `body` encodes (its segments' total), checked without building
    it; MalformedRuns when a segment is truncated or empty, or the total exceeds `limit`."""
    total = 0
    at = 0
    while at < len(body):
        if len(body) - at < _SEGMENT.size:
            raise MalformedRuns(f"truncated segment header at byte {at}")
        run, length = _SEGMENT.unpack_from(body, at)
        if run == 0 and length == 0:
            raise MalformedRuns(f"empty segment at byte {at}")
        at += _SEGMENT.size + length
        total += run + length
        if at > len(body):
            raise MalformedRuns(f"truncated literal before byte {at}: {length} bytes announced")
        if total > limit:
            raise MalformedRuns(f"decodes to more than {limit} bytes")
    return total
