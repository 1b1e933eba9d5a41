"""`matterfab device`: find any device, scrap it, reissue its DAC.

`find` answers from the device index (fleet/index.py: pointers written when a station records
a device flashed, or by `reindex`), never from a scan; a device built but not flashed yet is
found by `--device-id`, or by anything after `device reindex <order>`.
Exit codes: 0 found / done, 2 not found or bad input (one line), 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from matterfab import config
from matterfab.cli.dac import announce, input_errors
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
                raise NotFound(f"no device with serial {value}{index.NOT_INDEXED}")
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
            done = await scrap.scrap(
                store, device, reason, by or revocations.operator(), station_id
            )
            await announce(store, {device.rpartition("/")[0]})
            return done

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


@app.command("reissue")
def reissue_command(
    device: Annotated[str, typer.Argument(help="The device_id (<order>/<index>).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the new image's files to this folder.")
    ] = None,
    new_passcode: Annotated[
        bool, typer.Option("--new-passcode", help="Draw a new passcode and salt (new QR code).")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who (default user@host).")] = None,
    profiles_dir: Annotated[
        Path | None, typer.Option("--profiles-dir", help="Profiles folder (default: state).")
    ] = None,
) -> None:
    """Rework: revoke the device's DAC (superseded) and issue a new one with new images.

    Serial, discriminator and passcode stay the same (--new-passcode: a fresh passcode and
    salt, so a new QR code). Runs where the order's profile key is.
    A device-key device is granted one more certification: its station's next CSR is taken.
    """
    from matterfab.errors import MatterfabError
    from matterfab.fleet import reissue

    async def run() -> reissue.Reissued:
        kek = None
        try:
            kek = config.load_kek()
        except MatterfabError:
            pass  # needed only for xts orders; reissue says so when it is
        async with ObjectStore.open(config.load_s3_settings()) as store:
            done = await reissue.reissue(
                store, device, by or revocations.operator(), profiles_dir, kek, new_passcode
            )
            await announce(store, {device.rpartition("/")[0]})
            return done

    try:
        done = asyncio.run(run())
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name, data in done.files.items():
                (out / name).write_bytes(data)
    except (InvalidInput, NotFound) as exc:
        raise input_errors(exc) from exc
    except OSError as exc:
        raise input_errors(invalid("out", f"cannot write {exc.filename}: {exc.strerror}")) from exc
    for o in done.revoked:
        typer.echo(f"DAC {o.record.dac_serial}: revoked {o.record.reason}")
    if done.image is not None:
        typer.echo(
            f"{device}: generation {done.image.generation}, new DAC {done.image.dac_serial}"
            + (f"; files in {out}" if out is not None else "")
        )
    if done.grant is not None:
        typer.echo(
            f"{device}: may be certified again (generation {done.grant.generation}): "
            "the station's next CSR for it is accepted"
        )


@app.command("reindex")
def reindex(order: Annotated[str, typer.Argument(help="An order (built so far).")]) -> None:
    """Make an order's built devices findable by serial, DAC serial and QR before they are
    flashed (a station's flash result indexes a device by itself). Idempotent."""

    async def run() -> int:
        async with ObjectStore.open(config.load_s3_settings()) as store:
            return await index.reindex(store, order)

    try:
        count = asyncio.run(run())
    except (InvalidInput, NotFound) as exc:
        raise input_errors(exc) from exc
    typer.echo(f"{order}: {count} devices indexed")
