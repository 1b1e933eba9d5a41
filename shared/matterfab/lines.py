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

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from matterfab import sealing
from matterfab.errors import IntegrityError, InvalidInput, invalid
from matterfab.messages.base import DEFAULT_LINE, LINE_PATTERN
from matterfab.objectstore import Store

PREFIX = "lines/"
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


def key_object(line: str, version: int) -> str:
    """Object key of a line key version: `lines/<line>/keys/<version, 6 digits>.json`."""
    return f"{PREFIX}{line}/keys/{version:06d}.json"


def check_name(line: str, field: str = "line") -> str:
    """The line name, or InvalidInput naming `field`."""
    if not LINE_RE.match(line):
        raise invalid(field, "must be 1..64 of [A-Za-z0-9._-]")
    return line


async def keys(store: Store, line: str) -> list[LineKey]:
    """Every registered version of `line`'s key, oldest first (empty: no such line)."""
    out = []
    for name in await store.list_keys(f"{PREFIX}{line}/keys/"):
        raw = await store.get_or_none(name)
        if raw is not None:
            out.append(LineKey(**json.loads(raw)))
    return sorted(out, key=lambda k: k.version)


async def names(store: Store) -> list[str]:
    """Every registered line."""
    found = {k[len(PREFIX) :].split("/", 1)[0] for k in await store.list_keys(PREFIX)}
    return sorted(found)


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
