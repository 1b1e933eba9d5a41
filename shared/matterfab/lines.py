"""Production lines and their sealing keys: the public catalogue in the bucket, and key files.

`lines/<line>/keys/<version>.json` (write-once, version 1, 2, …): the line's X25519 public key
(PEM), its fingerprint and when it was registered. A line's *current* key is its highest
version: new orders are sealed to it; the allocator fixes it in the order's `claim.json` when
it accepts the order, so a rotation never splits an order and earlier orders keep theirs.
The catalogue holds public keys only. A line's private key lives where its stations are
(a 0600 PEM file, or an HSM/TPM/vault whose public key `line add` registers); for the local
stack, `matterfab up` keeps line `local`'s key at `<state folder>/lines/local.pem`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from matterfab import sealing
from matterfab.bucket import keys as bucket_keys
from matterfab.errors import IntegrityError, InvalidInput, invalid
from matterfab.messages.base import DEFAULT_LINE, LINE_PATTERN, ObjectRef
from matterfab.objectstore import Store

PREFIX = bucket_keys.LINES
LINE_RE = re.compile(LINE_PATTERN)
__all__ = ["DEFAULT_LINE", "LineCatalogue", "LineKey"]
KEYS_DIR = "lines"  # under the local state folder: <line>.pem


@dataclass(frozen=True)
class LineKey:
    """One registered version of a line's sealing key (public part only)."""

    line: str
    version: int
    fingerprint: str
    public_key_pem: str
    created_at: str  # UTC, ISO 8601

    def public_key(self) -> sealing.X25519PublicKey:
        """The key itself."""
        return sealing.load_public(self.public_key_pem.encode(), f"line {self.line}")

    def to_json(self) -> bytes:
        """The catalogue object's bytes."""
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LineKey:
        """The record from the catalogue object's bytes (`lines/<line>/keys/<version>.json`)."""
        return cls(**json.loads(raw))


def key_object(line: str, version: int) -> str:
    """Object key of a line key version: `lines/<line>/keys/<version, 6 digits>.json`."""
    return bucket_keys.line_key_object(line, version)


def check_name(line: str, field: str = "line") -> str:
    """The line name, or InvalidInput naming `field`."""
    if not LINE_RE.match(line):
        raise invalid(field, "must be 1..64 of [A-Za-z0-9._-]")
    return line


async def keys(store: Store, line: str) -> list[LineKey]:
    """Every registered version of `line`'s key, oldest first (empty: no such line)."""
    out = []
    for name in await store.list_keys(bucket_keys.line_keys_prefix(line)):
        raw = await store.get_or_none(name)
        if raw is not None:
            out.append(LineKey.from_bytes(raw))
    return sorted(out, key=lambda k: k.version)


async def names(store: Store) -> list[str]:
    """Every registered line (one with a key: stations also keep their presence under lines/)."""
    return bucket_keys.line_names(await store.list_keys(PREFIX))


async def register(store: Store, line: str, public_key_pem: bytes, *, new_line: bool) -> LineKey:
    """Register a public key as the line's next version, write-once.

    `new_line`: the line must not exist yet (create/add); else it must (rotate).
    """
    check_name(line)
    key = sealing.load_public(public_key_pem, "public key")
    existing = await keys(store, line)
    if new_line and existing:
        raise invalid("line", f"line {line} already exists (use `line rotate {line}`)")
    if not new_line and not existing:
        raise invalid("line", f"no line {line} (use `line create {line}`)")
    fp = sealing.fingerprint(key)
    if any(k.fingerprint == fp for k in existing):
        raise invalid("public_key", f"key {fp} is already registered for line {line}")
    version = existing[-1].version + 1 if existing else 1
    entry = LineKey(
        line=line,
        version=version,
        fingerprint=fp,
        public_key_pem=sealing.public_pem(key).decode(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:
        await store.put_once(key_object(line, version), entry.to_json(), "application/json")
    except IntegrityError:
        raise invalid("line", f"line {line} changed meanwhile (version {version} taken)") from None
    return entry


def write_private_key(path: Path, key: X25519PrivateKey) -> None:
    """Write a private key PEM, mode 0600; refuses to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise invalid("key_out", f"{path} exists: a line key is never overwritten") from None
    except OSError as exc:
        raise invalid("key_out", f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(sealing.private_pem(key))


def read_private_key(path: Path) -> X25519PrivateKey:
    """A line private key from its PEM file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise sealing.SealError(f"line key {path}: {exc.strerror}") from None
    return sealing.load_private(pem, str(path))


def local_key_path(state: Path, line: str) -> Path:
    """Where the local state folder keeps a line's private key: `<state>/lines/<line>.pem`."""
    return state / KEYS_DIR / f"{line}.pem"


class LineCatalogue:
    """Reads line keys; versions are write-once, so a key found by fingerprint is kept."""

    def __init__(self, store: Store):
        self.store = store
        self._by_fp: dict[tuple[str, str], LineKey] = {}

    async def current(self, line: str) -> LineKey | None:
        """The line's newest key, or None when the line is not registered."""
        found = await keys(self.store, line)
        for k in found:
            self._by_fp[(line, k.fingerprint)] = k
        return found[-1] if found else None

    async def by_fingerprint(self, line: str, fp: str) -> LineKey | None:
        """The line's key with fingerprint `fp`, or None."""
        hit = self._by_fp.get((line, fp))
        if hit is None:
            for k in await keys(self.store, line):
                self._by_fp[(line, k.fingerprint)] = k
            hit = self._by_fp.get((line, fp))
        return hit


async def ensure_local_line(store: Store, state: Path, line: str = DEFAULT_LINE) -> LineKey:
    """Register `line` with a key kept in the state folder, unless done already (`make up`).

    Makes `<state>/lines/<line>.pem` (0600) if absent; registers its public key if the line
    is not registered. A registered line whose keys do not include the file's is left as it
    is (a station with that file then stops at start, naming the mismatch).
    """
    path = local_key_path(state, line)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        write_private_key(path, sealing.generate())
    private = read_private_key(path)
    existing = await keys(store, line)
    if existing:
        return existing[-1]
    try:
        return await register(store, line, sealing.public_pem(private.public_key()), new_line=True)
    except InvalidInput:
        again = await keys(store, line)  # registered by a concurrent `up`
        if again:
            return again[-1]
        raise


class LineKeys:
    """The private keys of one line held here (a station, `order fetch`, `verify`), by
    fingerprint: usually one; during a rotation the old and the new."""

    def __init__(self, line: str, keys: list[X25519PrivateKey]):
        self.line = line
        self.keys = {sealing.fingerprint(k.public_key()): k for k in keys}

    @classmethod
    def load(cls, line: str, paths: list[Path], state: Path | None) -> LineKeys:
        """The keys in `paths`; none given: the state folder's key of `line`, if it has one."""
        if not paths and state is not None:
            found = local_key_path(state, line)
            paths = [found] if found.exists() else []
        return cls(line, [read_private_key(p) for p in paths])

    @property
    def fingerprints(self) -> list[str]:
        """The fingerprints of the keys held, sorted."""
        return sorted(self.keys)

    def open(self, data: bytes, ref: ObjectRef, order_id: str, device_id: str, file: str) -> bytes:
        """The plaintext of the sealed object `data` that `ref` points at, for that device and
        file, decoded as its header's encoding says (to the ref's plaintext size), checked
        against the ref's plaintext sha256; SealError saying why not."""
        seal_info = ref.sealed
        if seal_info is None:
            raise sealing.SealError(f"{file}: not sealed, but the order is sealed to a line")
        expected = sealing.Binding(seal_info.line, seal_info.key, order_id, device_id, file)
        found, _ = sealing.parse(data)
        why = sealing.mismatch(found, expected)
        if why is not None:
            raise sealing.SealError(f"{file}: {why}")
        key = self.keys.get(seal_info.key)
        if key is None:
            held = ", ".join(self.fingerprints) or "none"
            raise KeyNotHeld(
                f"{file}: sealed to line {seal_info.line} key {seal_info.key}; keys held here: "
                f"{held}"
            )
        try:
            plain = sealing.open_sealed(data, key, expected, seal_info.size)
        except sealing.SealError as exc:
            raise sealing.SealError(f"{file}: {exc}") from None
        digest = hashlib.sha256(plain).hexdigest()
        if digest != seal_info.sha256 or len(plain) != seal_info.size:
            raise sealing.SealError(
                f"{file}: opened, but its plaintext sha256 {digest} does not match the ref's"
            )
        return plain


class KeyNotHeld(sealing.SealError):
    """The object is sealed to a key of the line that is not held here."""


async def check_keys(store: Store, keys: LineKeys) -> LineKey:
    """Every key held must be a registered key of its line; returns the line's current key.

    SealError (one line) when the line is unknown, no key is held, or a key is not the line's.
    """
    registered = await keys_of(store, keys.line)
    if not registered:
        raise sealing.SealError(f"line {keys.line} is not registered (`matterfab line list`)")
    if not keys.keys:
        raise sealing.SealError(
            f"line {keys.line}: no line key here: give --line-key PATH (the line's private key)"
        )
    known = {k.fingerprint for k in registered}
    for fp in keys.fingerprints:
        if fp not in known:
            current = registered[-1].fingerprint
            raise sealing.SealError(
                f"line {keys.line}: key {fp} is not a registered key of the line (current key "
                f"{current}, `matterfab line show {keys.line}`)"
            )
    return registered[-1]


keys_of = keys  # `keys` is shadowed by parameters named so
