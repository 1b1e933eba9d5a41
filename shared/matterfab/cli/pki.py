"""`matterfab pki`: attestation profiles and a throwaway test PKI.

Scripts rely on (DESIGN §8): `init-test` creates a profile usable in work orders at once and
writes the PAA it chains to as `<profile dir>/paa.pem`; `show NAME` prints that directory as
its first line. Exit codes: 0 ok, 2 invalid input (the rule is printed), 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from matterfab import catalogue, config, profiles
from matterfab.errors import InvalidInput, MatterfabError, StackError
from matterfab.s3 import ObjectStore

app = typer.Typer(help="Attestation profiles and test PKI", no_args_is_help=True)


def parse_id(text: str) -> int:
    """A VID/PID written in decimal or as 0x-prefixed hex (0xFFF1 and 65521 are the same)."""
    try:
        return int(text, 0)
    except ValueError as exc:
        raise typer.BadParameter(f"must be decimal or 0x-prefixed hex, got {text!r}") from exc


@contextmanager
def _errors() -> Iterator[None]:
    # One place decides what a failure means on the command line.
    try:
        yield
    except InvalidInput as exc:
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from exc
    except MatterfabError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _dir(profiles_dir: Path | None) -> Path:
    return profiles_dir if profiles_dir is not None else profiles.profiles_dir()


ProfilesDirOption = Annotated[
    Path | None,
    typer.Option(
        "--profiles-dir",
        help="Where profiles live (default: $MATTERFAB_PROFILES_DIR or <state dir>/profiles).",
    ),
]


@app.command("init-test")
def init_test(
    vid: Annotated[str, typer.Option("--vid", help="Vendor ID, e.g. 0xFFF1.")],
    pid: Annotated[str, typer.Option("--pid", help="Product ID, e.g. 0x8000.")],
    name: Annotated[str, typer.Option("--name", help="Profile name used in work orders.")],
    paa_cert: Annotated[Path | None, typer.Option("--paa-cert", help="Use this PAA.")] = None,
    paa_key: Annotated[Path | None, typer.Option("--paa-key", help="Key of --paa-cert.")] = None,
    cd_cert: Annotated[Path | None, typer.Option("--cd-cert", help="CD signing cert.")] = None,
    cd_key: Annotated[Path | None, typer.Option("--cd-key", help="Key of --cd-cert.")] = None,
    dac_validity_days: Annotated[
        int | None, typer.Option("--dac-validity-days", help="Default: the PAI's lifetime.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile.")] = False,
    profiles_dir: ProfilesDirOption = None,
) -> None:
    """Create a test attestation profile: PAA (or the given one), PAI with a file key, test CD."""
    with _errors():
        profile = profiles.init_test_profile(
            name,
            parse_id(vid),
            parse_id(pid),
            profiles_dir=_dir(profiles_dir),
            paa_cert_path=paa_cert,
            paa_key_path=paa_key,
            cd_cert_path=cd_cert,
            cd_key_path=cd_key,
            dac_validity_days=dac_validity_days,
            force=force,
        )
    typer.echo(str(profile.directory))
    typer.echo(str(profile.directory / profiles.PAA_FILE))
    _publish(profile)


PUBLISH_TIMEOUT_S = 20.0


def _publish(profile: profiles.AttestationProfile) -> None:
    """Put the profile's public part in the catalogue so orders can name it at once."""
    try:
        settings = config.load_s3_settings()
    except StackError:
        typer.echo(
            "note: no object store configured; the signer publishes it when it starts", err=True
        )
        return

    async def run() -> None:
        async with ObjectStore.open(settings) as store:
            await catalogue.publish(store, profile.public_summary())

    try:
        asyncio.run(asyncio.wait_for(run(), PUBLISH_TIMEOUT_S))
    except (TimeoutError, MatterfabError, OSError) as exc:
        typer.echo(
            f"note: could not publish to the catalogue now ({exc}); the signer will", err=True
        )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    profiles_dir: ProfilesDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the public summary.")] = False,
) -> None:
    """Print the profile's directory (first line), then what it holds (no key material)."""
    with _errors():
        profile = profiles.load_profile(name, _dir(profiles_dir))
    typer.echo(str(profile.directory))
    if as_json:
        typer.echo(json.dumps(profile.public_summary(), indent=2))
        return
    pid = "any" if profile.product_id is None else f"0x{profile.product_id:04X}"
    typer.echo(f"vendor_id  0x{profile.vendor_id:04X}")
    typer.echo(f"product_id {pid}")
    typer.echo(f"pai        {profile.pai_cert.subject.rfc4514_string()}")
    typer.echo(f"paa        {profile.paa_cert.subject.rfc4514_string()}")
    typer.echo(f"key source {profile.key_spec.get('type')}")
    days = profile.dac_validity_days
    typer.echo(f"dac days   {'until the PAI expires' if days is None else days}")


@app.command("list")
def list_(profiles_dir: ProfilesDirOption = None) -> None:
    """List profile names, one per line."""
    with _errors():
        for name in profiles.list_profiles(_dir(profiles_dir)):
            typer.echo(name)
