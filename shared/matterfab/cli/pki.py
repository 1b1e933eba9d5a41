"""`matterfab pki`: attestation profiles: test, production (the maker's PAI) and CD-only.

Scripts rely on (DESIGN §8): `init-test` creates a profile usable in work orders at once and
writes the PAA it chains to as `<profile dir>/paa.pem`; `show NAME` prints that directory as
its first line; `csr` makes the PAI key and its CSR; `add` registers a production profile after
checking every part (nothing is written otherwise); `add-cd` a CD-only profile for on-module
orders. Exit codes: 0 ok, 2 invalid input (each broken rule is printed), 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matterfab import catalogue, config, keysource, production_pki, profiles
from matterfab.errors import FieldError, InvalidInput, MatterfabError, StackError, invalid
from matterfab.keysource import DEFAULT_PIN_ENV
from matterfab.matter import cd
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


KeyFileOption = Annotated[
    Path | None, typer.Option("--key-file", help="PAI key in a PEM file (mode 0600).")
]
ModuleOption = Annotated[
    str | None, typer.Option("--pkcs11-module", help="PKCS#11 module, e.g. libsofthsm2.so.")
]
TokenOption = Annotated[str | None, typer.Option("--token-label", help="Token label.")]
KeyLabelOption = Annotated[str | None, typer.Option("--key-label", help="PAI key label.")]
PinEnvOption = Annotated[
    str | None,
    typer.Option(
        "--pin-env",
        help=f"Variable holding the PIN (default {DEFAULT_PIN_ENV}), or an encrypted "
        "--key-file's password.",
    ),
]
PinFileOption = Annotated[
    Path | None,
    typer.Option("--pin-file", help="File holding the PIN or key password (instead of --pin-env)."),
]


@app.command("csr")
def csr(
    vid: Annotated[str, typer.Option("--vid", help="Vendor ID, e.g. 0xFFF1.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the CSR (PEM).")],
    pid: Annotated[
        str | None, typer.Option("--pid", help="Product ID, for a PID-bound PAI.")
    ] = None,
    common_name: Annotated[
        str | None, typer.Option("--common-name", help="Subject CN (default: 'PAI 0x<VID>').")
    ] = None,
    key_file: KeyFileOption = None,
    pkcs11_module: ModuleOption = None,
    token_label: TokenOption = None,
    key_label: KeyLabelOption = None,
    pin_env: PinEnvOption = None,
    pin_file: PinFileOption = None,
) -> None:
    """Make the PAI key (new 0600 file, or inside the token: non-extractable) and its CSR."""
    with _errors():
        vendor_id = parse_id(vid)
        product_id = None if pid is None else parse_id(pid)
        if not out.parent.is_dir():
            raise invalid(f"--out {out}", f"folder {out.parent} does not exist")
        spec = production_pki.key_spec(
            key_file=key_file,
            module=pkcs11_module,
            token_label=token_label,
            key_label=key_label,
            pin_env=pin_env,
            pin_file=pin_file,
        )
        cn = common_name or f"PAI 0x{vendor_id:04X}" + (
            "" if product_id is None else f" 0x{product_id:04X}"
        )
        request = production_pki.make_pai_csr(spec, vendor_id, product_id, cn)
        try:
            out.write_bytes(request.public_bytes(serialization.Encoding.PEM))
        except OSError as exc:
            raise invalid(f"--out {out}", f"cannot write: {exc.strerror}") from exc
    typer.echo(str(out))
    typer.echo(f"subject    {request.subject.rfc4514_string()}")
    typer.echo(f"key        {_key_source(spec)}")
    typer.echo("next       send the CSR to your PAA operator; register the PAI with `pki add`")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Profile name used in work orders.")],
    pai_cert: Annotated[Path, typer.Option("--pai-cert", help="The PAI your PAA issued.")],
    paa_cert: Annotated[Path, typer.Option("--paa-cert", help="The PAA it chains to.")],
    cd_file: Annotated[Path, typer.Option("--cd", help="The CSA's CD for the product (DER).")],
    cd_signing_cert: Annotated[
        Path | None, typer.Option("--cd-signing-cert", help="Certificate to verify --cd with.")
    ] = None,
    pid: Annotated[
        str | None, typer.Option("--pid", help="Restrict to one product (default: the PAI's).")
    ] = None,
    key_file: KeyFileOption = None,
    pkcs11_module: ModuleOption = None,
    token_label: TokenOption = None,
    key_label: KeyLabelOption = None,
    pin_env: PinEnvOption = None,
    pin_file: PinFileOption = None,
    dac_validity_days: Annotated[
        int | None, typer.Option("--dac-validity-days", help="Default: until the PAI expires.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile.")] = False,
    profiles_dir: ProfilesDirOption = None,
) -> None:
    """Register a production profile (your PAI, its key, the CSA's CD) after checking it all."""
    with _errors():
        spec = production_pki.key_spec(
            key_file=key_file,
            module=pkcs11_module,
            token_label=token_label,
            key_label=key_label,
            pin_env=pin_env,
            pin_file=pin_file,
        )
        profile = production_pki.add_production_profile(
            name,
            pai_cert_path=pai_cert,
            paa_cert_path=paa_cert,
            cd_path=cd_file,
            cd_signing_cert_path=cd_signing_cert,
            spec=spec,
            product_id=None if pid is None else parse_id(pid),
            dac_validity_days=dac_validity_days,
            profiles_dir=_dir(profiles_dir),
            force=force,
        )
    if cd_signing_cert is None:
        typer.echo(
            f"warning: --cd {cd_file} was parsed but its signature was NOT verified "
            "(give --cd-signing-cert to verify it)",
            err=True,
        )
    typer.echo(str(profile.directory))
    _publish(profile)


def _read_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise invalid(f"{option} {path}", f"cannot read: {exc.strerror}") from exc


@app.command("add-cd")
def add_cd(
    name: Annotated[str, typer.Argument(help="Profile name used in work orders.")],
    vid: Annotated[str, typer.Option("--vid", help="Vendor ID, e.g. 0xFFF1.")],
    pid: Annotated[str | None, typer.Option("--pid", help="Product ID the CD must list.")] = None,
    cd_file: Annotated[
        Path | None, typer.Option("--cd", help="The CSA's CD (CMS DER). Default: a test CD.")
    ] = None,
    cd_signing_cert: Annotated[
        Path | None, typer.Option("--cd-signing-cert", help="Certificate to verify --cd with.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile.")] = False,
    profiles_dir: ProfilesDirOption = None,
) -> None:
    """Create a CD-only profile for `dac_storage: on-module` orders (modules hold their DAC)."""
    with _errors():
        cd_der = None if cd_file is None else _read_file(cd_file, "--cd")
        cert = None
        if cd_signing_cert is not None:
            cert = profiles.read_cert(cd_signing_cert, f"--cd-signing-cert {cd_signing_cert}")
        try:
            profile = profiles.create_cd_only_profile(
                name,
                parse_id(vid),
                None if pid is None else parse_id(pid),
                cd_der,
                cert,
                _dir(profiles_dir),
                force=force,
            )
        except InvalidInput as exc:
            if cd_file is None:
                raise
            # Name the file the CD came from in every CD error.
            raise InvalidInput(
                [
                    FieldError(f"--cd {cd_file}", e.message) if e.field.endswith(".cd") else e
                    for e in exc.errors
                ]
            ) from exc
    if cd_file is not None and cd_signing_cert is None:
        typer.echo(
            f"warning: --cd {cd_file} was parsed but its signature was NOT verified "
            "(give --cd-signing-cert to verify it)",
            err=True,
        )
    typer.echo(str(profile.directory))
    _publish(profile)


def _validity(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}..{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"


def _key_source(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "none (CD only: issues no DACs)"
    if spec.get("type") == "file":
        return f"file {spec.get('path')}"
    if spec.get("type") == "pkcs11":
        pin = spec.get("pin_file") or f"${spec.get('pin_env') or keysource.DEFAULT_PIN_ENV}"
        return (
            f"pkcs11 module {spec.get('module')} token '{spec.get('token_label')}' "
            f"key '{spec.get('key_label')}' (PIN from {pin})"
        )
    return str(spec.get("type"))


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
    typer.echo(f"kind       {profile.kind}")
    typer.echo(f"vendor_id  0x{profile.vendor_id:04X}")
    typer.echo(f"product_id {pid}")
    if profile.pai_cert is not None:
        typer.echo(f"pai        {profile.pai_cert.subject.rfc4514_string()}")
        typer.echo(f"pai valid  {_validity(profile.pai_cert)}")
    if profile.paa_cert is not None:
        typer.echo(f"paa        {profile.paa_cert.subject.rfc4514_string()}")
        typer.echo(f"paa valid  {_validity(profile.paa_cert)}")
    typer.echo(f"key source {_key_source(profile.key_spec)}")
    if profile.issues_dacs:
        days = profile.dac_validity_days
        typer.echo(f"dac days   {'until the PAI expires' if days is None else days}")
    try:
        content = cd.parse_cd(profile.cd_der)
        pids = ", ".join(f"0x{p:04X}" for p in content.product_id_array)
        typer.echo(
            f"cd         vendor 0x{content.vendor_id:04X}, products {pids}, "
            f"certificate {content.certificate_id}, type {content.certification_type}"
        )
    except InvalidInput as exc:
        typer.echo(f"cd         unreadable: {exc}")


@app.command("list")
def list_(profiles_dir: ProfilesDirOption = None) -> None:
    """List profiles, one per line: name, kind (test, production, cd-only), VID/PID."""
    with _errors():
        base = _dir(profiles_dir)
        for name in profiles.list_profiles(base):
            try:
                profile = profiles.load_profile(name, base)
            except InvalidInput as exc:
                typer.echo(f"{name}\tdamaged\t{exc}")
                continue
            pid = "any" if profile.product_id is None else f"0x{profile.product_id:04X}"
            typer.echo(f"{name}\t{profile.kind}\t0x{profile.vendor_id:04X}/{pid}")


@app.command("crl")
def crl(
    name: Annotated[str, typer.Argument(help="Profile whose PAI signs the CRL.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the CRL (DER).")],
    next_update_days: Annotated[
        int, typer.Option("--next-update-days", min=1, max=3650, help="nextUpdate, in days.")
    ] = 30,
    data_url: Annotated[
        str | None,
        typer.Option("--data-url", help="Where the CRL will be published (the DCL's dataURL)."),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Revocation point label (default: the profile).")
    ] = None,
    profiles_dir: ProfilesDirOption = None,
) -> None:
    """Write an X.509 v2 CRL of the profile's revoked DACs, and its DCL revocation point JSON.

    The CRL is signed with the profile's PAI key (a file or PKCS#11, as the signer uses it),
    numbered one above the last CRL of this profile, and lists every DAC revoked so far. The
    revocation point goes beside it, as `<out without suffix>.revocation-point.json`.
    """
    from matterfab.fleet import revocations
    from matterfab.matter import crl as crl_core

    point_path = out.with_name(out.stem + ".revocation-point.json")
    with _errors():
        try:
            profile = profiles.load_profile(name, _dir(profiles_dir))
            pai = profile.require_pai()
        except MatterfabError as exc:
            raise invalid("attestation_profile", str(exc)) from exc
        if data_url is not None and not data_url.startswith(("http://", "https://")):
            raise invalid("data_url", f"must start with http:// or https://, got {data_url!r}")
        signer = profile.signer()  # InvalidInput: no key, wrong PIN, key not the PAI's

        def build(number: int, entries: list[crl_core.RevokedDac], now: Any) -> bytes:
            return crl_core.build_crl(
                pai=pai,
                signer=signer,
                number=number,
                revoked=entries,
                this_update=now,
                next_update_days=next_update_days,
            )

        async def run() -> tuple[bytes, Any]:
            async with ObjectStore.open(config.load_s3_settings()) as store:
                return await revocations.issue_crl(
                    store, name, build, next_update_days, revocations.operator()
                )

        der, issue = asyncio.run(run())
        point = crl_core.revocation_point(
            pai=pai, crl_der=der, data_url=data_url, label=label or name
        )
        try:
            out.write_bytes(der)
            point_path.write_text(json.dumps(point, indent=1) + "\n")
        except OSError as exc:
            raise invalid("out", f"cannot write {exc.filename}: {exc.strerror}") from exc
    typer.echo(
        f"CRL {issue.number} of profile {name}: {issue.revoked} revoked DAC(s), next update "
        f"{issue.next_update:%Y-%m-%d}; wrote {out} and {point_path}"
    )
