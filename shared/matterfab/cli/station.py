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
    line_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--line-key",
            help="The line's private key (PEM) that opens sealed images; repeat during a "
            "rotation. Default: <state folder>/lines/<line>.pem (line local, local stack)",
        ),
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
    efuse_cmd: Annotated[
        str | None,
        typer.Option(
            "--efuse-cmd",
            help="eFuse burn template for ecdsa-peripheral DAC keys (read-protected); "
            "placeholders {efuse_key} {efuse_key_pem} {efuse_block} {chip} {port}",
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
    print_zpl: Annotated[
        str | None,
        typer.Option("--print-zpl", help="Print each label: raw ZPL to HOST:PORT (port 9100)"),
    ] = None,
    print_cmd: Annotated[
        str | None,
        typer.Option(
            "--print-cmd",
            help="Print each label with a command; placeholders {label_zpl} {label_pdf} "
            "{label_png} (files) {device_id} {serial_num} {mac}",
        ),
    ] = None,
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
    csr_cmd: Annotated[
        str | None,
        typer.Option(
            "--csr-cmd",
            help="device-key orders: command printing the device's CSR; placeholders {port} "
            "{device_id} {serial_num} {chip} {mac}",
        ),
    ] = None,
    cert_cmd: Annotated[
        str | None,
        typer.Option(
            "--cert-cmd",
            help="device-key orders: command writing the DAC; placeholders {dac} {pai} "
            "(DER files) {secure_cert} (esp_secure_cert image, no key) {device_id} {port} "
            "{serial_num}",
        ),
    ] = None,
    dac_timeout: Annotated[
        float | None,
        typer.Option("--dac-timeout", help="Seconds to wait for the signer's DAC (15)"),
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
            line_key=line_key or None,
            out=out,
            flash_cmd=flash_cmd,
            efuse_cmd=efuse_cmd,
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
            print_zpl=print_zpl,
            print_cmd=print_cmd,
            csr_cmd=csr_cmd,
            cert_cmd=cert_cmd,
            dac_timeout=dac_timeout,
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
