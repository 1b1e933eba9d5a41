"""`matterfab station run`: a factory station that flashes the line's ready images.

Exit codes: 2 for invalid settings (every broken rule printed), 1 for any other failure;
otherwise it runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from matterfab.errors import InvalidInput, MatterfabError

app = typer.Typer(help="Factory stations: flash ready images, report MACs.", no_args_is_help=True)


@app.command()
def run(
    station_id: Annotated[str | None, typer.Option("--station-id", help="This station")] = None,
    line: Annotated[
        str | None,
        typer.Option("--line", help="Production line; its stations share the work"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write images to DIR/<order>/<index>/")
    ] = None,
    flash_cmd: Annotated[
        str | None,
        typer.Option(
            "--flash-cmd",
            help="Flash command template; placeholders {partition} {keys} {offset} {port} "
            "{serial_num} {device_id} {secure_cert}, and in orders with a firmware bundle "
            "{chip} {flash_args} (every 'offset file' pair in flash order)",
        ),
    ] = None,
    merged: Annotated[
        bool | None,
        typer.Option(
            "--merged/--no-merged",
            help="With --out, bundle orders: also write merged.bin (whole flash, esptool)",
        ),
    ] = None,
    port: Annotated[str | None, typer.Option("--port", help="Value of {port}")] = None,
    offset: Annotated[
        str | None, typer.Option("--offset", help="Value of {offset} if the image has none")
    ] = None,
    mac_pattern: Annotated[
        str | None, typer.Option("--mac-pattern", help="Regex finding the MAC in the output")
    ] = None,
    test_mac_prefix: Annotated[
        str | None,
        typer.Option("--test-mac-prefix", help="1..3 leading bytes of synthetic MACs (--out)"),
    ] = None,
    order: Annotated[
        str | None, typer.Option("--order", help="Flash only this order; skip the others")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Attempts per image here")
    ] = None,
    max_requeues: Annotated[
        int | None,
        typer.Option("--max-requeues", help="Re-queues of an image before it fails for good"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds one flash command may take")
    ] = None,
    backoff: Annotated[
        float | None, typer.Option("--backoff", help="Seconds before a retry (doubling)")
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per commit")] = None,
    eol_cmd: Annotated[
        str | None,
        typer.Option(
            "--eol-cmd",
            help="End-of-line test ({device_id} {serial_num} {port}); failing scraps the device",
        ),
    ] = None,
    fail_rate: Annotated[
        float | None,
        typer.Option("--fail-rate", help="TEST KNOB: probability a flash attempt fails"),
    ] = None,
) -> None:
    """Flash the line's ready images (to a folder or with a command) and report each device.

    Every option can also come from env `MATTERFAB_STATION_<OPTION>` (e.g. `…_LINE`).
    """
    from matterfab.services.station import config, main  # late: keeps `matterfab --help` fast

    try:
        settings = config.load_settings(
            station_id=station_id,
            line=line,
            out=out,
            flash_cmd=flash_cmd,
            merged=merged,
            port=port,
            offset=offset,
            mac_pattern=mac_pattern,
            test_mac_prefix=test_mac_prefix,
            order=order,
            max_attempts=max_attempts,
            max_requeues=max_requeues,
            timeout=timeout,
            backoff=backoff,
            batch=batch,
            fail_rate=fail_rate,
            eol_cmd=eol_cmd,
        )
    except InvalidInput as exc:
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from exc
    try:
        asyncio.run(main.run(settings))
    except MatterfabError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
