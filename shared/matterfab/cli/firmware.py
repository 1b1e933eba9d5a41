"""`matterfab firmware add|show|list`: register a product's firmware once, for whole-flash orders.

Exit codes: 0 done (also when the same bundle is already registered), 2 for a bundle that
breaks a rule (every broken rule printed, nothing stored), 1 for any other failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from matterfab.cli.failures import command_errors, with_store
from matterfab.errors import FieldError, InvalidInput, invalid

app = typer.Typer(
    help="Firmware bundles: bootloader, partition table and app flashed with every device.",
    no_args_is_help=True,
)


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise invalid(field, f"cannot read {path}: {exc.strerror}") from exc


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Bundle name, 1..64 of [A-Za-z0-9._-]")],
    chip: Annotated[str, typer.Option("--chip", help="esptool chip name, e.g. esp32c3")],
    bootloader: Annotated[Path, typer.Option("--bootloader", help="bootloader.bin")],
    partition_table: Annotated[
        Path, typer.Option("--partition-table", help="partition-table.bin (binary, not CSV)")
    ],
    app_bin: Annotated[Path, typer.Option("--app", help="The application image")],
    flash_size: Annotated[str, typer.Option("--flash-size", help="1MB..128MB")] = "4MB",
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="OFFSET=FILE flashed with every device (repeatable)"),
    ] = None,
    table_offset: Annotated[
        str, typer.Option("--partition-table-offset", help="Where the table goes")
    ] = "0x8000",
    factory_partition: Annotated[
        str, typer.Option("--factory-partition", help="Label of the NVS factory partition")
    ] = "fctry",
) -> None:
    """Check a firmware bundle against its partition table and store it write-once."""
    from matterfab import firmware

    with command_errors():
        errors: list[FieldError] = []
        extras: dict[int, bytes] = {}
        sources = {
            "bootloader.bin": bootloader.name,
            "partition-table.bin": partition_table.name,
            "app.bin": app_bin.name,
        }
        for item in extra or []:
            offset_text, sep, path = item.partition("=")
            if not sep or not path:
                errors.append(FieldError("extra", f"must be OFFSET=FILE, got {item!r}"))
                continue
            try:
                offset = firmware.parse_offset(offset_text, "extra")
                extras[offset] = _read(Path(path), "extra")
                sources[f"extra-0x{offset:X}.bin"] = Path(path).name
            except InvalidInput as exc:
                errors += exc.errors
        if errors:
            raise InvalidInput(errors)
        bundle, blobs = firmware.make_bundle(
            name,
            chip,
            _read(bootloader, "bootloader"),
            _read(partition_table, "partition_table"),
            _read(app_bin, "app"),
            extras=extras,
            flash_size=flash_size,
            table_offset=firmware.parse_offset(table_offset, "partition_table_offset"),
            factory_partition=factory_partition,
            sources=sources,
        )
        stored = with_store(lambda store: firmware.store_bundle(store, bundle, blobs))
    for f in bundle.files:
        typer.echo(f"0x{f.offset:06X}  {f.size:>9}  {f.sha256[:16]}  {f.name}")
    verb = "registered" if stored else "already registered (identical)"
    typer.echo(f"firmware {name} {verb}: {firmware.bundle_key(name)}")


@app.command()
def show(name: Annotated[str, typer.Argument(help="Bundle name")]) -> None:
    """Print a bundle's bundle.json after checking every file's sha256, and its partitions."""
    from matterfab import firmware

    with command_errors():
        loaded = with_store(lambda store: firmware.load(store, name))
        if loaded is None:
            raise invalid("name", f"unknown firmware bundle {name!r}")
    typer.echo(json.dumps(loaded.bundle.model_dump(mode="json"), indent=2))
    for p in loaded.table.entries:
        typer.echo(
            f"# {p.label:<16} type 0x{p.type:02X}/0x{p.subtype:02X}  {p.offset:#08x}  {p.size:#x}"
        )
    typer.echo(f"# bundle.json sha256 {loaded.sha256}; every file verified")


@app.command("list")
def list_() -> None:
    """Names of the registered bundles."""
    from matterfab import firmware

    with command_errors():
        names = with_store(firmware.list_bundles)
    for name in names:
        typer.echo(name)
