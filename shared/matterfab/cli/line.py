"""`matterfab line create|add|list|show|rotate`: production lines and their sealing keys.

A line's key seals every per-device secret of its orders (DESIGN §9, `matterfab/sealing.py`).
The bucket's catalogue holds public keys only, write-once, one version per rotation. Exit
codes: 0 done, 2 for input that breaks a rule (an existing line or key file, a bad PEM),
1 for any other failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from matterfab.cli.failures import command_errors, with_store
from matterfab.errors import MatterfabError, invalid
from matterfab.objectstore import Store

app = typer.Typer(
    help="Production lines: the keys that seal each device's secrets for its line.",
    no_args_is_help=True,
)
out = Console()

LineArg = Annotated[str, typer.Argument(help="Line name, 1..64 of [A-Za-z0-9._-]")]


def _public_pem(path: Path) -> bytes:
    from matterfab import sealing

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise invalid("public_key", f"cannot read {path}: {exc.strerror}") from None
    try:
        sealing.load_public(pem, str(path))
    except sealing.SealError as exc:
        raise invalid("public_key", str(exc)) from None
    return pem


def _new_key(key_out: Path) -> bytes:
    """Make a key pair, write the private key (0600, never over a file); its public PEM."""
    from matterfab import lines, sealing

    if key_out.exists():
        raise invalid("key_out", f"{key_out} exists: a line key is never overwritten")
    key = sealing.generate()
    lines.write_private_key(key_out, key)
    return sealing.public_pem(key.public_key())


def _register(line: str, pem: bytes | None, key_out: Path | None, *, new_line: bool) -> None:
    from matterfab import lines

    lines.check_name(line)

    async def work(store: Store) -> lines.LineKey:
        existing = await lines.keys(store, line)
        if new_line and existing:
            raise invalid("line", f"line {line} already exists (use `line rotate {line}`)")
        if not new_line and not existing:
            raise invalid("line", f"no line {line} (use `line create {line}`)")
        if pem is not None:
            public = pem
        else:
            assert key_out is not None
            public = _new_key(key_out)
        return await lines.register(store, line, public, new_line=new_line)

    entry = with_store(work)
    out.print(
        f"line {entry.line} key {entry.version}: {entry.fingerprint} (registered "
        f"{entry.created_at})"
    )
    if key_out is not None and pem is None:
        out.print(f"private key written to {key_out} (mode 0600): keep it on the line's stations")


@app.command()
def create(
    line: LineArg,
    key_out: Annotated[
        Path, typer.Option("--key-out", help="Where to write the private key (PEM, 0600)")
    ],
) -> None:
    """Make a line's X25519 key pair; register the public key, write the private one."""
    with command_errors():
        _register(line, None, key_out, new_line=True)


@app.command()
def add(
    line: LineArg,
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The line's X25519 public key, PEM")
    ],
) -> None:
    """Register a line whose key was made elsewhere (an HSM, a TPM, a vault)."""
    with command_errors():
        _register(line, _public_pem(public_key), None, new_line=True)


@app.command()
def rotate(
    line: LineArg,
    key_out: Annotated[
        Path | None, typer.Option("--key-out", help="Make the new key pair; private key here")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Or register this public key (PEM)")
    ] = None,
) -> None:
    """Give a line a new key: new orders are sealed to it, earlier ones keep theirs."""
    with command_errors():
        if (key_out is None) == (public_key is None):
            raise invalid("key_out", "give exactly one of --key-out or --public-key")
        pem = _public_pem(public_key) if public_key is not None else None
        _register(line, pem, key_out, new_line=False)


@app.command("list")
def list_lines() -> None:
    """Every line with its current key's fingerprint and date."""
    from matterfab import lines

    async def work(store: Store) -> list[list[lines.LineKey]]:
        names = await lines.names(store)
        return [await lines.keys(store, n) for n in names]

    with command_errors():
        found = with_store(work)
    table = Table("line", "key", "fingerprint", "since")
    for versions in found:
        if versions:
            k = versions[-1]
            table.add_row(k.line, str(k.version), k.fingerprint, k.created_at)
    out.print(table)


@app.command()
def show(line: LineArg) -> None:
    """Every key version of a line: fingerprint, date, and which one is current."""
    from matterfab import lines

    with command_errors():
        lines.check_name(line)
        versions = with_store(lambda store: lines.keys(store, line))
        if not versions:
            raise MatterfabError(f"no line {line} (`matterfab line list`)")
    table = Table("key", "fingerprint", "registered", "")
    for k in versions:
        table.add_row(
            str(k.version), k.fingerprint, k.created_at, "current" if k is versions[-1] else ""
        )
    out.print(f"line {line}")
    out.print(table)
