"""`matterfab dac revoke`: revoke DACs by device, DAC serial or whole order.

Each revocation is a write-once record in the bucket (fleet/revocations.py: who, when, why);
revoking again is a no-op (exit 0, the first record stands). Exit codes: 0 done, 2 unknown
device, serial or order, or a reason not in the list (one line), 1 anything else.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from matterfab import config
from matterfab.errors import InvalidInput, invalid
from matterfab.fleet import revocations
from matterfab.fleet.index import NotFound
from matterfab.matter.crl import REASONS, check_reason
from matterfab.s3 import ObjectStore

app = typer.Typer(help="Revoke device attestation certificates.", no_args_is_help=True)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def input_errors(exc: Exception) -> typer.Exit:
    """Print an input error or a NotFound as one line each; the Exit (2) to raise."""
    if isinstance(exc, InvalidInput):
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_INVALID)


async def _revoke(
    device: str | None, dac_serial: str | None, order: str | None, reason: str, by: str
) -> list[revocations.Outcome]:
    async with ObjectStore.open(config.load_s3_settings()) as store:
        if device is not None:
            targets = [await revocations.device_target(store, device)]
        elif dac_serial is not None:
            targets = [await revocations.dac_target(store, dac_serial)]
        else:
            assert order is not None
            targets = await revocations.order_targets(store, order)
        return await revocations.revoke_all(store, targets, reason, by)


@app.command("revoke")
def revoke(
    reason: Annotated[str, typer.Option("--reason", help=f"One of: {', '.join(REASONS)}.")],
    device: Annotated[str | None, typer.Option("--device", help="A device_id.")] = None,
    dac_serial: Annotated[
        str | None, typer.Option("--dac-serial", help="A DAC serial, hex.")
    ] = None,
    order: Annotated[str | None, typer.Option("--order", help="Every DAC of an order.")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who revokes (default user@host).")] = None,
) -> None:
    """Revoke DACs: the records go into every CRL made after (`pki crl`)."""
    try:
        check_reason(reason)
        chosen = [o for o in (device, dac_serial, order) if o is not None]
        if len(chosen) != 1:
            raise invalid("target", "give exactly one of --device, --dac-serial, --order")
        outcomes = asyncio.run(
            _revoke(device, dac_serial, order, reason, by or revocations.operator())
        )
    except (InvalidInput, NotFound) as exc:
        raise input_errors(exc) from exc
    new = sum(o.created for o in outcomes)
    for o in outcomes:
        r = o.record
        what = (
            "revoked" if o.created else f"already revoked ({r.reason}, {r.at:%Y-%m-%dT%H:%M:%SZ})"
        )
        typer.echo(f"{r.device_id} DAC {r.dac_serial}: {what}")
    typer.echo(f"{new} revoked, {len(outcomes) - new} already revoked")
