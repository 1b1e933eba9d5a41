"""Read an ESP-IDF NVS partition image back into namespaces, keys, types and values.

Written from the NVS format as ESP-IDF documents it (api-reference/storage/nvs_flash, "NVS
internals"), not from the generator's code, so that it checks what the generator produced:

- page = 4096 bytes: 32-byte header (state u32, sequence u32, version u8, ..., CRC32 of bytes
  4..28), 32-byte entry state bitmap (2 bits per entry: 11 empty, 10 written, 00 erased),
  126 entries of 32 bytes;
- entry = ns u8, type u8, span u8, chunk index u8, CRC32 u32 (of bytes 0..4 and 8..32),
  key char[16], data 8 bytes: a primitive value, or for strings and blob chunks size u16,
  reserved u16, CRC32 of the data that follows in span-1 entries; a blob index holds total
  size u32, chunk count u8, chunk start u8;
- namespace 0 maps names to indices (u8 entries);
- CRC32 is zlib's crc32 seeded with 0xFFFFFFFF (ESP ROM crc32_le(0xFFFFFFFF, ...));
- NVS encryption: every non-empty entry (not headers or bitmaps) is AES-256-XTS encrypted
  with the key pair from the keys partition, tweak = entry's offset in the partition (LE).
"""

from __future__ import annotations

import struct
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from matterfab.errors import invalid

PAGE_SIZE = 4096
ENTRY_SIZE = 32
ENTRIES_PER_PAGE = 126
FIRST_ENTRY = 64
PAGE_EMPTY = 0xFFFFFFFF
PAGE_ACTIVE = 0xFFFFFFFE
PAGE_FULL = 0xFFFFFFFC
PAGE_FREEING = 0xFFFFFFF8
STATE_WRITTEN = 0b10
STATE_EMPTY = 0b11

_PRIMITIVES: dict[int, tuple[str, str]] = {
    0x01: ("u8", "<B"),
    0x11: ("i8", "<b"),
    0x02: ("u16", "<H"),
    0x12: ("i16", "<h"),
    0x04: ("u32", "<I"),
    0x14: ("i32", "<i"),
    0x08: ("u64", "<Q"),
    0x18: ("i64", "<q"),
}
TYPE_SZ = 0x21
TYPE_BLOB_V1 = 0x41
TYPE_BLOB_DATA = 0x42
TYPE_BLOB_IDX = 0x48
CHUNK_ANY = 0xFF

Decoded = dict[str, dict[str, tuple[str, object]]]


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def xts_key_from_keys_partition(keys: bytes) -> bytes:
    """The 64-byte XTS key pair held in an NVS keys partition, after checking its CRC."""
    if len(keys) < 68:
        raise invalid("keys", "an NVS keys partition holds at least 68 bytes (key pair ‖ CRC)")
    key, (crc,) = keys[:64], struct.unpack_from("<I", keys, 64)
    if _crc(key) != crc:
        raise invalid("keys", "CRC32 of the key pair does not match: not an NVS keys partition")
    return key


def _decrypt_entry(cipher_key: bytes, page_index: int, entry_no: int, data: bytes) -> bytes:
    address = page_index * PAGE_SIZE + FIRST_ENTRY + entry_no * ENTRY_SIZE
    tweak = address.to_bytes(16, "little")
    decryptor = Cipher(algorithms.AES(cipher_key), modes.XTS(tweak)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _entry_states(page: bytes) -> list[int]:
    bitmap = page[32:64]
    return [(bitmap[i // 4] >> ((i % 4) * 2)) & 0b11 for i in range(ENTRIES_PER_PAGE)]


def _page_entries(page: bytes, index: int, xts_key: bytes | None) -> tuple[list[bytes], list[int]]:
    """The page's 126 entries (decrypted when a key is given) and their states."""
    states = _entry_states(page)
    entries = []
    for i in range(ENTRIES_PER_PAGE):
        raw = page[FIRST_ENTRY + i * ENTRY_SIZE : FIRST_ENTRY + (i + 1) * ENTRY_SIZE]
        if xts_key is not None and states[i] != STATE_EMPTY:
            raw = _decrypt_entry(xts_key, index, i, raw)
        entries.append(raw)
    return entries, states


def _key_name(entry: bytes, where: str) -> str:
    raw = entry[8:24]
    if b"\0" not in raw:
        raise invalid("image", f"{where}: key is not NUL-terminated")
    try:
        return raw.split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise invalid("image", f"{where}: key is not ASCII") from None


def decode_partition(image: bytes, *, keys: bytes | None = None) -> Decoded:
    """Decode a partition into {namespace: {key: (type, value)}}, checking every CRC.

    Types are NVS item types: u8, i8, u16, i16, u32, i32, u64, i64 (int values), string (str,
    without the NUL) and blob (bytes; hex2bin, base64 and binary entries all store blobs).
    `keys` is the NVS keys partition of an encrypted image. Raises InvalidInput (field
    `image`) on any structural or CRC error, and on a key written twice.
    """
    if len(image) % PAGE_SIZE or not image:
        raise invalid("image", "length must be a non-zero multiple of 4096")
    xts_key = xts_key_from_keys_partition(keys) if keys is not None else None
    pages = []
    for index in range(len(image) // PAGE_SIZE):
        page = image[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
        state, seq = struct.unpack_from("<II", page, 0)
        if state == PAGE_EMPTY:
            continue
        if state not in (PAGE_ACTIVE, PAGE_FULL, PAGE_FREEING):
            raise invalid("image", f"page {index}: unknown page state {state:#010x}")
        (crc,) = struct.unpack_from("<I", page, 28)
        if _crc(page[4:28]) != crc:
            raise invalid("image", f"page {index}: header CRC mismatch")
        pages.append((seq, index, page))
    pages.sort()  # NVS replays pages in sequence order

    names: dict[int, str] = {}
    items: list[tuple[int, str, int, object, int]] = []  # ns, key, type, payload, chunk index
    blob_index: dict[tuple[int, str], tuple[int, int, int]] = {}
    for _seq, index, page in pages:
        entries, states = _page_entries(page, index, xts_key)
        i = 0
        while i < ENTRIES_PER_PAGE:
            if states[i] != STATE_WRITTEN:
                i += 1
                continue
            i = _read_item(entries, i, f"page {index} entry {i}", names, items, blob_index)

    return _assemble(names, items, blob_index)


def _read_item(
    entries: list[bytes],
    i: int,
    where: str,
    names: dict[int, str],
    items: list[tuple[int, str, int, object, int]],
    blob_index: dict[tuple[int, str], tuple[int, int, int]],
) -> int:
    """Read the item starting at entry i; return the index of the entry after it."""
    entry = entries[i]
    ns, kind, span, chunk = entry[0], entry[1], entry[2], entry[3]
    (crc,) = struct.unpack_from("<I", entry, 4)
    if _crc(entry[0:4] + entry[8:32]) != crc:
        raise invalid("image", f"{where}: entry CRC mismatch")
    key = _key_name(entry, where)
    if ns == 0:
        if kind != 0x01:
            raise invalid("image", f"{where}: namespace entry is not u8")
        names[entry[24]] = key
        return i + 1
    if kind in _PRIMITIVES:
        _name, fmt = _PRIMITIVES[kind]
        (value,) = struct.unpack_from(fmt, entry, 24)
        items.append((ns, key, kind, value, CHUNK_ANY))
        return i + 1
    if kind == TYPE_BLOB_IDX:
        size, count, start = struct.unpack_from("<IBB", entry, 24)
        if (ns, key) in blob_index:
            raise invalid("image", f"{where}: blob index for {key!r} written twice")
        blob_index[(ns, key)] = (size, count, start)
        return i + 1
    if kind not in (TYPE_SZ, TYPE_BLOB_V1, TYPE_BLOB_DATA):
        raise invalid("image", f"{where}: unknown item type {kind:#04x}")
    size, _reserved, data_crc = struct.unpack_from("<HHI", entry, 24)
    if span < 1 or i + span > ENTRIES_PER_PAGE or (span - 1) * ENTRY_SIZE < size:
        raise invalid("image", f"{where}: span {span} does not fit {size} bytes in the page")
    data = b"".join(entries[i + 1 : i + span])[:size]
    if _crc(data) != data_crc:
        raise invalid("image", f"{where}: data CRC mismatch for {key!r}")
    items.append((ns, key, kind, data, chunk))
    return i + span


def _assemble(
    names: dict[int, str],
    items: list[tuple[int, str, int, object, int]],
    blob_index: dict[tuple[int, str], tuple[int, int, int]],
) -> Decoded:
    out: Decoded = {}
    chunks: dict[tuple[int, str, int], bytes] = {}

    def put(ns: int, key: str, value: tuple[str, object]) -> None:
        if ns not in names:
            raise invalid("image", f"key {key!r} uses undefined namespace index {ns}")
        space = out.setdefault(names[ns], {})
        if key in space:
            raise invalid("image", f"key {key!r} written twice in namespace {names[ns]!r}")
        space[key] = value

    for ns, key, kind, payload, chunk in items:
        if kind == TYPE_BLOB_DATA:
            assert isinstance(payload, bytes)
            chunks[(ns, key, chunk)] = payload
        elif kind == TYPE_SZ:
            assert isinstance(payload, bytes)
            if not payload.endswith(b"\0"):
                raise invalid("image", f"string {key!r} is not NUL-terminated")
            try:
                text = payload[:-1].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("image", f"string {key!r} is not UTF-8") from None
            put(ns, key, ("string", text))
        elif kind == TYPE_BLOB_V1:
            put(ns, key, ("blob", payload))
        else:
            put(ns, key, (_PRIMITIVES[kind][0], payload))
    for (ns, key), (size, count, start) in blob_index.items():
        try:
            data = b"".join(chunks.pop((ns, key, start + n)) for n in range(count))
        except KeyError:
            raise invalid("image", f"blob {key!r}: a chunk is missing") from None
        if len(data) != size:
            raise invalid("image", f"blob {key!r}: chunks hold {len(data)} bytes, index {size}")
        put(ns, key, ("blob", data))
    if chunks:
        orphans = sorted({key for _ns, key, _c in chunks})
        raise invalid("image", f"blob chunks without an index: {', '.join(orphans)}")
    return out
