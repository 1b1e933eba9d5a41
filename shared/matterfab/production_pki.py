"""A maker's own PAI: the key and CSR for it, and registering it as a production profile.

`make_pai_csr` creates the PAI key (a new 0600 file, or inside a PKCS#11 token where it is
sensitive and non-extractable) and a CSR the maker sends to its PAA operator.
`add_production_profile` registers what comes back: it checks every part first and writes
nothing unless all of them hold (PAI profile, chain to the PAA, the key matches the PAI by a
test signature, the CD verifies and lists the VID/PID, DACs would not outlive the PAI).
Errors name the command-line option, the file (or label) and the rule, e.g.
`--pai-cert /x/pai.pem: PAI expired on 2025-01-01 00:00Z`. The PIN is never stored: a profile
names only the environment variable or file it is read from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from matterfab import keysource, profiles
from matterfab.errors import AttestationError, FieldError, InvalidInput, MatterfabError, invalid
from matterfab.matter import pai_profile
from matterfab.matter.attestation import (
    PRODUCT_ID_OID,
    VENDOR_ID_OID,
    PaiSigner,
    subject_matter_id,
)

# keysource's field names, as the command-line options that set them.
_KEY_OPTIONS = {
    "key_source.path": "--key-file",
    "key_source.module": "--pkcs11-module",
    "key_source.token_label": "--token-label",
    "key_source.key_label": "--key-label",
    "key_source.pin_env": "--pin-env",
    "key_source.pin_file": "--pin-file",
    "key_source.password_env": "--pin-env",
    "key_source.password_file": "--pin-file",
}


def key_spec(
    *,
    key_file: Path | None = None,
    module: str | None = None,
    token_label: str | None = None,
    key_label: str | None = None,
    pin_env: str | None = None,
    pin_file: Path | None = None,
) -> dict[str, Any]:
    """The key-source spec a set of command-line options names (exactly one source)."""
    pkcs11_given = [o for o, v in (("--pkcs11-module", module), ("--token-label", token_label),
                                   ("--key-label", key_label)) if v]  # fmt: skip
    if key_file is not None and pkcs11_given:
        raise invalid("key source", "give --key-file or the --pkcs11-… options, not both")
    if pin_env and pin_file:
        raise invalid("--pin-env", "give --pin-env or --pin-file, not both")
    if key_file is not None:
        spec: dict[str, Any] = {"type": "file", "path": str(key_file.expanduser().resolve())}
        # An encrypted key file: --pin-env / --pin-file name its password.
        if pin_file is not None:
            spec["password_file"] = str(pin_file.expanduser().resolve())
        elif pin_env:
            spec["password_env"] = pin_env
        return spec
    if not pkcs11_given:
        raise invalid(
            "key source", "give --key-file F or --pkcs11-module, --token-label, --key-label"
        )
    missing = [o for o in ("--pkcs11-module", "--token-label", "--key-label")
               if o not in pkcs11_given]  # fmt: skip
    if missing:
        raise invalid("key source", f"a PKCS#11 key needs {', '.join(missing)} too")
    spec = {
        "type": "pkcs11",
        "module": module,
        "token_label": token_label,
        "key_label": key_label,
    }
    if pin_file is not None:
        spec["pin_file"] = str(pin_file.expanduser().resolve())
    else:
        spec["pin_env"] = pin_env or keysource.DEFAULT_PIN_ENV
    return spec


def _key_error_field(spec: dict[str, Any], field: str) -> str:
    if field == "key_source.pin":
        if spec.get("pin_file"):
            return f"--pin-file {spec['pin_file']}"
        return f"--pin-env {spec.get('pin_env') or keysource.DEFAULT_PIN_ENV}"
    if field == "key_source":
        return _key_field(spec)
    option = _KEY_OPTIONS.get(field)
    if option is None:
        return field
    value = {
        "--key-file": spec.get("path"),
        "--pkcs11-module": spec.get("module"),
        "--token-label": spec.get("token_label"),
        "--key-label": spec.get("key_label"),
        "--pin-env": spec.get("pin_env") or spec.get("password_env"),
        "--pin-file": spec.get("pin_file") or spec.get("password_file"),
    }[option]
    return f"{option} {value}" if value else option


def _key_errors(spec: dict[str, Any], exc: InvalidInput) -> list[FieldError]:
    return [FieldError(_key_error_field(spec, e.field), e.message) for e in exc.errors]


def _key_field(spec: dict[str, Any]) -> str:
    if spec["type"] == "file":
        return f"--key-file {spec['path']}"
    return f"--key-label {spec['key_label']}"


def _open_signer(spec: dict[str, Any]) -> PaiSigner:
    try:
        return keysource.load_signer(spec)
    except InvalidInput as exc:
        raise InvalidInput(_key_errors(spec, exc)) from exc


def _close(signer: PaiSigner | None) -> None:
    close = getattr(signer, "close", None)
    if close is not None:
        close()


def make_pai_csr(
    spec: dict[str, Any], vendor_id: int, product_id: int | None, common_name: str
) -> x509.CertificateSigningRequest:
    """Create the PAI key the spec names (new file, or in the token) and its signed CSR."""
    pai_profile.pai_subject(vendor_id, product_id, common_name)  # refuse bad IDs before any key
    try:
        if spec["type"] == "file":
            signer: PaiSigner = keysource.FilePaiSigner(
                keysource.create_key_file(Path(spec["path"])), Path(spec["path"])
            )
        else:
            pin = keysource.read_pin(spec)
            keysource.generate_pkcs11_key(
                spec["module"], spec["token_label"], pin, spec["key_label"]
            )
            signer = keysource.Pkcs11PaiSigner(
                spec["module"], spec["token_label"], pin, spec["key_label"]
            )
    except InvalidInput as exc:
        raise InvalidInput(_key_errors(spec, exc)) from exc
    try:
        return pai_profile.build_csr(signer, vendor_id, product_id, common_name)
    finally:
        _close(signer)


def _read(path: Path, option: str, errors: list[FieldError]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        errors.append(FieldError(f"{option} {path}", f"cannot read: {exc.strerror}"))
        return None


def _cert(path: Path, option: str, errors: list[FieldError]) -> x509.Certificate | None:
    try:
        return profiles.read_cert(path, f"{option} {path}")
    except InvalidInput as exc:
        errors.extend(exc.errors)
        return None


def add_production_profile(
    name: str,
    *,
    pai_cert_path: Path,
    paa_cert_path: Path,
    cd_path: Path,
    cd_signing_cert_path: Path | None,
    spec: dict[str, Any],
    product_id: int | None = None,
    dac_validity_days: int | None = None,
    profiles_dir: Path,
    force: bool = False,
    now: datetime | None = None,
) -> profiles.AttestationProfile:
    """Check every part of a production profile, then write it; InvalidInput lists all faults.

    The VID comes from the PAI's subject, the PID from `product_id` or the PAI's subject (None:
    any product the PAI and CD allow). Without `cd_signing_cert_path` the CD is parsed only.
    """
    profiles.check_target(name, profiles_dir, force)
    moment = now or datetime.now(UTC)
    errors: list[FieldError] = []
    pai_field, paa_field = f"--pai-cert {pai_cert_path}", f"--paa-cert {paa_cert_path}"
    pai = _cert(pai_cert_path, "--pai-cert", errors)
    paa = _cert(paa_cert_path, "--paa-cert", errors)
    cd_der = _read(cd_path, "--cd", errors)
    cd_cert = None
    if cd_signing_cert_path is not None:
        cd_cert = _cert(cd_signing_cert_path, "--cd-signing-cert", errors)

    vendor_id = pid = None
    if pai is not None:
        errors += [
            FieldError(pai_field, p)
            for p in pai_profile.pai_problems(pai, product_id=product_id, now=moment)
        ]
        try:
            vendor_id = subject_matter_id(pai.subject, VENDOR_ID_OID, "PAI VendorID")
            pid = product_id or subject_matter_id(pai.subject, PRODUCT_ID_OID, "PAI ProductID")
        except AttestationError:
            pass  # reported by pai_problems
        problem = pai_profile.dac_validity_problem(pai, dac_validity_days, moment)
        if problem:
            errors.append(FieldError("--dac-validity-days", problem))
    if paa is not None:
        errors += [FieldError(paa_field, p) for p in pai_profile.paa_problems(paa, now=moment)]
    if pai is not None and paa is not None:
        problem = pai_profile.chain_problem(pai, paa)
        if problem:
            errors.append(FieldError(pai_field, f"does not chain to {paa_field}: {problem}"))
    if cd_der is not None and vendor_id is not None and (cd_cert or not cd_signing_cert_path):
        try:
            profiles.check_cd(cd_der, cd_cert, vendor_id, pid, field=f"--cd {cd_path}")
        except InvalidInput as exc:
            errors += exc.errors

    signer: PaiSigner | None = None
    try:
        try:
            signer = _open_signer(spec)
        except InvalidInput as exc:
            errors += exc.errors
        except MatterfabError as exc:
            errors.append(FieldError(_key_field(spec), str(exc)))
        if spec["type"] == "file":
            problem = keysource.key_file_problem(Path(spec["path"]))
            if problem and signer is not None:
                errors.append(FieldError(_key_field(spec), problem))
        if signer is not None and pai is not None and not pai_profile.key_matches(signer, pai):
            errors.append(
                FieldError(
                    _key_field(spec),
                    f"is not the PAI's key: a test signature made with it does not verify "
                    f"with the public key of {pai_field}",
                )
            )
    finally:
        _close(signer)

    if errors:
        raise InvalidInput(errors)
    assert pai is not None and paa is not None and cd_der is not None and vendor_id is not None
    return profiles.create_profile(
        name,
        vendor_id=vendor_id,
        product_id=pid,
        pai_cert=pai,
        paa_cert=paa,
        cd_der=cd_der,
        cd_signing_cert=cd_cert,
        key_spec=spec,
        dac_validity_days=dac_validity_days,
        profiles_dir=profiles_dir,
        force=force,
        kind=profiles.KIND_PRODUCTION,
    )
