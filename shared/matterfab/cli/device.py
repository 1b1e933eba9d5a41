"""`matterfab device`: find any device, scrap it, reissue its DAC.

`find` answers from the device index (fleet/index.py: pointers kept as devices move), never
from a scan. Exit codes: 0 found / done, 2 not found or bad input (one line), 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from matterfab import config
from matterfab.cli.dac import input_errors
from matterfab.errors import InvalidInput, invalid
from matterfab.fleet import index, revocations, scrap
from matterfab.fleet.index import DeviceView, NotFound
from matterfab.s3 import ObjectStore

app = typer.Typer(help="Find, scrap and reissue devices.", no_args_is_help=True)


async def _find(kind: str, value: str) -> list[DeviceView]:
    async with ObjectStore.open(config.load_s3_settings()) as store:
        if kind == "serial":
            ids = await index.resolve_serial(store, value)
            if not ids:
                raise NotFound(f"no device with serial {value}")
        else:
            ids = [await index.resolve(store, kind, value)]
        return list(await asyncio.gather(*(index.device_view(store, i) for i in ids)))


def _lines(view: DeviceView) -> list[str]:
    d = view.to_json()
    lines = [
        f"device   {d['device_id']}  (order {d['order_id']}, index {d['index']})",
        f"state    {d['state']}",
    ]
    if d["serial_num"] is not None:
        lines += [
            f"serial   {d['serial_num']}  vid 0x{d['vendor_id']:04X} pid 0x{d['product_id']:04X}"
            f"  discriminator {d['discriminator']}",
            f"qr       {d['qr_payload']}  manual {d['manual_code']}",
        ]
    for dac in d["dacs"]:
        rev = dac["revoked"]
        status = "valid" if rev is None else f"revoked {rev['reason']} {rev['at']} by {rev['by']}"
        lines.append(f"dac      gen {dac['generation']}  {dac['dac_serial'] or '-'}  {status}")
    if d["station_id"] is not None:
        lines.append(
            f"station  {d['station_id']} line {d['line']}  {d['station_status']}"
            f"  mac {d['mac'] or '-'}  at {d['flashed_at'] or '-'}"
        )
    if d["scrapped"] is not None:
        s = d["scrapped"]
        lines.append(f"scrapped {s['at']} by {s['by']}: {s['reason']}")
    if d["certify_grants"]:
        lines.append(f"certify  may be certified again as generation {d['certify_grants'][-1]}")
    return lines


@app.command("find")
def find(
    serial: Annotated[str | None, typer.Option("--serial", help="Serial number.")] = None,
    mac: Annotated[str | None, typer.Option("--mac", help="MAC address.")] = None,
    dac_serial: Annotated[str | None, typer.Option("--dac-serial", help="DAC serial, hex.")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="<order>/<index>.")] = None,
    qr: Annotated[str | None, typer.Option("--qr", help="QR payload, MT:...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find a device by anything printed on it or read from it."""
    given = {
        k: v
        for k, v in (
            ("serial", serial),
            ("mac", mac),
            ("dac_serial", dac_serial),
            ("device_id", device_id),
            ("qr", qr),
        )
        if v is not None
    }
    try:
        if len(given) != 1:
            raise invalid(
                "key", "give exactly one of --serial, --mac, --dac-serial, --device-id, --qr"
            )
        ((kind, value),) = given.items()
        views = asyncio.run(_find(kind, value))
    except (InvalidInput, NotFound) as exc:
        raise input_errors(exc) from exc
    if as_json:
        docs: Any = [v.to_json() for v in views]
        typer.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=1))
        return
    for n, view in enumerate(views):
        if n:
            typer.echo("")
        for line in _lines(view):
            typer.echo(line)


@app.command("scrap")
def scrap_command(
    device: Annotated[str, typer.Argument(help="The device_id (<order>/<index>).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (one line).")],
    station_id: Annotated[
        str | None, typer.Option("--station-id", help="Reporting station.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who (default user@host).")] = None,
) -> None:
    """Scrap a device that failed end-of-line: its DAC is revoked (cessationOfOperation)."""

    async def run() -> scrap.Scrapped:
        async with ObjectStore.open(config.load_s3_settings()) as store:
            return await scrap.scrap(
                store, device, reason, by or revocations.operator(), station_id
            )

    try:
        done = asyncio.run(run())
    except (InvalidInput, NotFound) as exc:
        raise input_errors(exc) from exc
    r = done.record
    typer.echo(
        f"{device}: {'scrapped' if done.created else 'already scrapped'} "
        f"({r.at:%Y-%m-%dT%H:%M:%SZ} by {r.by}: {r.reason})"
    )
    if done.revocation is not None:
        rev = done.revocation.record
        typer.echo(f"DAC {rev.dac_serial}: revoked {rev.reason}")
