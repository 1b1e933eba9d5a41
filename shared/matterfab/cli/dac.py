"""`matterfab dac`: DACs bought from a PKI vendor (`import`) and DACs revoked (`revoke`).

`dac import`: every pair is checked as esp-matter-mfg-tool checks `--dac-cert/--dac-key`
(matter/dac_import.py) against the profile's PAI, VID and PID; one bad pair refuses the whole
batch, naming it. The keys are stored wrapped under the key-encryption key (dac_pool.py); orders
with `dac_source: "imported"` then take one unused DAC per device. Exit codes: 0 imported, 2
refused (every broken rule printed), 1 any other failure.

`dac revoke`: each revocation is a write-once record in the bucket (fleet/revocations.py: who,
when, why); revoking again is a no-op (exit 0, the first record stands). Exit codes: 0 done, 2
unknown device, serial or order, or a reason not in the list (one line), 1 anything else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from matterfab import config, dac_pool, kafka, profiles
from matterfab.cli.pki import ProfilesDirOption, _dir, _errors
from matterfab.errors import InvalidInput, invalid
from matterfab.fleet import revocations
from matterfab.fleet.index import NotFound, order_counts
from matterfab.keywrap import KeyWrapper
from matterfab.matter import dac_import
from matterfab.matter.crl import REASONS, check_reason
from matterfab.messages import ORDER_EVENTS, OrderEvent
from matterfab.messages.codec import encode
from matterfab.s3 import ObjectStore

app = typer.Typer(
    help="Imported and revoked device attestation certificates.", no_args_is_help=True
)


async def import_dacs(
    batch: str, profile_name: str, certs: Path, keys: Path, profiles_dir: Path
) -> tuple[int, int]:
    """Check and store a batch; (imported, unused in the pool afterwards)."""
    profile = profiles.load_profile(profile_name, profiles_dir)
    checked = dac_import.check_batch(
        dac_import.read_pairs(certs, keys),
        profile.require_pai(),
        profile.vendor_id,
        profile.product_id,
    )
    wrapper = KeyWrapper(config.load_kek())
    async with ObjectStore.open(config.load_s3_settings()) as store:
        count = await dac_pool.import_batch(store, wrapper, profile.name, batch, checked)
        left = len(await dac_pool.unused(store, profile.name))
    return count, left


@app.command("import")
def import_command(
    batch: Annotated[str, typer.Argument(help="Name of this batch (write-once), e.g. po-4711.")],
    profile: Annotated[str, typer.Option("--profile", help="Attestation profile (its PAI).")],
    certs: Annotated[
        Path, typer.Option("--certs", help="DAC certificates: PEM/DER file or directory.")
    ],
    keys: Annotated[Path, typer.Option("--keys", help="Their private keys: file or directory.")],
    profiles_dir: ProfilesDirOption = None,
) -> None:
    """Check every DAC of a batch against the profile's PAI and store them for orders."""
    with _errors():
        count, left = asyncio.run(import_dacs(batch, profile, certs, keys, _dir(profiles_dir)))
    typer.echo(f"imported {count} DACs into profile {profile} (batch {batch}); {left} unused")


EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def input_errors(exc: Exception) -> typer.Exit:
    """Print an input error or a NotFound as one line each; the Exit (2) to raise."""
    if isinstance(exc, InvalidInput):
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_INVALID)


async def announce(store: ObjectStore, order_ids: set[str]) -> None:
    """Tell the monitor (an order event per order) how many devices are scrapped and revoked.

    Best effort: the records are already in the bucket; an unreachable Kafka only delays the
    counts until the next announcement, so it is one warning line, not a failure.
    """
    events = []
    for order_id in sorted(order_ids):
        counts = await order_counts(store, order_id)
        events.append(OrderEvent(order_id=order_id, status="progress", **counts))
    settings = config.load_kafka_settings()
    try:
        prod = kafka.producer(settings)
        await kafka.start(prod, settings, f"publishing to {ORDER_EVENTS}")
        try:
            for ev in events:
                await prod.send_and_wait(ORDER_EVENTS, encode(ev), key=ev.order_id.encode())
        finally:
            await prod.stop()
    except Exception as exc:  # any Kafka failure: the counts wait for the next one
        typer.echo(f"warning: order events not sent ({type(exc).__name__})", err=True)


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
        outcomes = await revocations.revoke_all(store, targets, reason, by)
        await announce(store, {o.record.device_id.rpartition("/")[0] for o in outcomes})
        return outcomes


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
