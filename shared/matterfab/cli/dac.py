"""`matterfab dac import`: bring DACs bought from a PKI vendor into a profile's pool.

Every pair is checked as esp-matter-mfg-tool checks `--dac-cert/--dac-key` (matter/dac_import.py)
against the profile's PAI, VID and PID; one bad pair refuses the whole batch, naming it. The
keys are stored wrapped under the key-encryption key (dac_pool.py); orders with
`dac_source: "imported"` then take one unused DAC per device. Exit codes: 0 imported, 2 refused
(every broken rule printed), 1 any other failure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from matterfab import config, dac_pool, profiles
from matterfab.cli.pki import ProfilesDirOption, _dir, _errors
from matterfab.keywrap import KeyWrapper
from matterfab.matter import dac_import
from matterfab.s3 import ObjectStore

app = typer.Typer(help="Imported DACs (bought from a PKI vendor)", no_args_is_help=True)


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
