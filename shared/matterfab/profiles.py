"""Attestation profiles: the PAI, its key source, the PAA it chains to and the CD, on disk.

A profile is a folder `<profiles_dir>/<name>/`:
  profile.json    name, kind, vendor_id, product_id (or null: any PID the PAI allows),
                  dac_validity_days (null: up to the PAI's notAfter), key_source, created_at
  paa.pem         the PAA certificate the chain ends at (what commissioners must trust)
  pai.pem         the PAI certificate
  pai-key.pem     the PAI private key, mode 0600, only for a file key source
  cd.der          the Certification Declaration (CMS DER)
  cd-signing.pem  the certificate whose key signed the CD (public; absent when not given)
`kind` is "test" (`pki init-test`: a throwaway PKI), "production" (`pki add`: the maker's PAI)
or "cd-only" (`pki add-cd`: for `dac_storage: on-module` orders, whose modules already hold
their DAC; no PAA, PAI or key, only the CD). Profiles written before `kind` existed read as
"test" when their key is the folder's own `pai-key.pem`, else as "production".
Work orders name a profile in `attestation_profile`; the signer loads it with `load_profile`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import AttestationError, FieldError, InvalidInput, invalid
from matterfab.keysource import load_signer, read_private_key
from matterfab.matter import attestation, cd, pki
from matterfab.matter.attestation import PaiSigner

FIELD = "attestation_profile"
PROFILE_FILE = "profile.json"
PAA_FILE = "paa.pem"
PAI_FILE = "pai.pem"
PAI_KEY_FILE = "pai-key.pem"
CD_FILE = "cd.der"
CD_SIGNING_FILE = "cd-signing.pem"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # same alphabet as order IDs: safe as a dir
DEFAULT_DAC_VALIDITY_DAYS: int | None = None  # None: DACs live as long as their PAI
TEST_DEVICE_TYPE_ID = 0x0016  # Root Node, as in the SDK's test CDs
TEST_CERTIFICATE_ID = "ZIG20142ZB330003-24"  # the SDK test CD's 19-character placeholder
TEST_CD_VERSION = 1
KIND_TEST = "test"
KIND_PRODUCTION = "production"
KIND_CD_ONLY = "cd-only"
KINDS = (KIND_TEST, KIND_PRODUCTION, KIND_CD_ONLY)


@dataclass
class AttestationProfile:
    """An attestation profile as loaded from its folder (the key stays behind `key_spec`).

    A CD-only profile (`issues_dacs` False) has no PAI, PAA or key: `pai_cert`, `paa_cert` and
    `key_spec` are None.
    """

    name: str
    vendor_id: int
    product_id: int | None
    pai_cert: x509.Certificate | None
    paa_cert: x509.Certificate | None
    cd_der: bytes
    key_spec: dict[str, Any] | None
    dac_validity_days: int | None
    directory: Path
    kind: str = KIND_TEST

    @property
    def issues_dacs(self) -> bool:
        """Whether the profile can issue DACs (False for a CD-only profile)."""
        return self.kind != KIND_CD_ONLY

    def require_pai(self) -> x509.Certificate:
        """The PAI certificate; AttestationError for a CD-only profile, which has none."""
        if self.pai_cert is None:
            raise AttestationError(
                f"profile '{self.name}' is CD-only: it issues no DACs "
                "(use it for dac_storage on-module orders)"
            )
        return self.pai_cert

    def signer(self) -> PaiSigner:
        """Open the PAI key source and check it matches the PAI certificate."""
        pai = self.require_pai()
        if self.key_spec is None:
            raise invalid(f"{FIELD}.key_source", f"profile '{self.name}' has no key source")
        signer = load_signer(self.key_spec, base_dir=self.directory)
        if signer.public_key() != pai.public_key():
            raise invalid(f"{FIELD}.key_source", f"profile '{self.name}': key does not match PAI")
        return signer

    def public_summary(self) -> dict[str, Any]:
        """What may be published: IDs, PAI/PAA PEM and the CD, never key material or PINs."""
        return {
            "name": self.name,
            "kind": self.kind,
            "issues_dacs": self.issues_dacs,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "dac_validity_days": self.dac_validity_days,
            "pai_pem": None if self.pai_cert is None else _pem(self.pai_cert),
            "paa_pem": None if self.paa_cert is None else _pem(self.paa_cert),
            "cd_der_base64": base64.b64encode(self.cd_der).decode("ascii"),
            "key_source_type": None if self.key_spec is None else self.key_spec.get("type"),
        }


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def profiles_dir() -> Path:
    """$MATTERFAB_PROFILES_DIR, else `<state dir>/profiles` (config.profiles_dir)."""
    return _default_profiles_dir()


def _default_profiles_dir() -> Path:
    # Separate name: the functions below take a `profiles_dir` argument that shadows the public one.
    from matterfab import config  # lazily: config pulls in pydantic-settings

    return config.profiles_dir()


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise invalid(FIELD, f"profile name must be 1..64 of [A-Za-z0-9._-], got {name!r}")


def read_cert(path: Path, what: str) -> x509.Certificate:
    """A PEM or DER X.509 certificate from a file; InvalidInput naming `what`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise invalid(what, f"cannot read {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise invalid(what, f"{path} is not a PEM or DER X.509 certificate") from exc


def check_target(name: str, profiles_dir: Path, force: bool) -> None:
    """InvalidInput unless `name` is a valid profile name that is free (or `force`)."""
    _check_name(name)
    target = profiles_dir / name
    if target.exists() and not force:
        raise invalid(FIELD, f"profile '{name}' already exists at {target} (use --force)")


def check_cd(
    cd_der: bytes,
    cd_signing_cert: x509.Certificate | None,
    vendor_id: int,
    product_id: int | None,
    *,
    field: str = f"{FIELD}.cd",
) -> cd.CdContent:
    """Verify the CD with its signing certificate (or only parse it, when there is none) and
    check that it lists `vendor_id` and, when given, `product_id`; InvalidInput naming `field`.
    """
    try:
        content = (
            cd.parse_cd(cd_der)
            if cd_signing_cert is None
            else cd.verify_cd(cd_der, cd_signing_cert)
        )
    except AttestationError as exc:
        raise invalid(field, f"does not verify with the CD signing certificate: {exc}") from exc
    except InvalidInput as exc:
        raise InvalidInput([FieldError(field, str(e)) for e in exc.errors]) from exc
    errors = []
    if content.vendor_id != vendor_id:
        errors.append(
            FieldError(
                field,
                f"CD vendor_id is 0x{content.vendor_id:04X}, not the profile's 0x{vendor_id:04X}",
            )
        )
    if product_id is not None and product_id not in content.product_id_array:
        listed = ", ".join(f"0x{p:04X}" for p in content.product_id_array)
        errors.append(
            FieldError(field, f"CD does not list product_id 0x{product_id:04X} (it lists {listed})")
        )
    if errors:
        raise InvalidInput(errors)
    return content


def _write_profile(
    name: str,
    meta: dict[str, Any],
    files: dict[str, bytes],
    *,
    pai_key: ec.EllipticCurvePrivateKey | None,
    profiles_dir: Path,
) -> None:
    """Write the folder in a staging directory and rename it into place: all or nothing."""
    target = profiles_dir / name
    profiles_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=profiles_dir))
    try:
        if pai_key is not None:
            key_pem = pai_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Created 0600 from the start, so the key is never readable by others.
            fd = os.open(staging / PAI_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_pem)
        for file_name, data in files.items():
            (staging / file_name).write_bytes(data)
        meta = {**meta, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        (staging / PROFILE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        # Certificates and the CD are public (commissioners need paa.pem); the key file is 0600.
        os.chmod(staging, 0o755)  # noqa: S103
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def create_profile(
    name: str,
    *,
    vendor_id: int,
    product_id: int | None,
    pai_cert: x509.Certificate,
    paa_cert: x509.Certificate,
    cd_der: bytes,
    cd_signing_cert: x509.Certificate | None,
    key_spec: dict[str, Any],
    pai_key: ec.EllipticCurvePrivateKey | None = None,
    dac_validity_days: int | None = DEFAULT_DAC_VALIDITY_DAYS,
    profiles_dir: Path,
    force: bool = False,
    kind: str = KIND_PRODUCTION,
) -> AttestationProfile:
    """Check the parts fit together and write the profile folder (atomically, by rename).

    Without `cd_signing_cert` the CD is only parsed (its signature is not checked).
    """
    check_target(name, profiles_dir, force)
    if kind not in (KIND_TEST, KIND_PRODUCTION):
        raise invalid(f"{FIELD}.kind", f"must be test or production for a PAI profile, got {kind}")
    if dac_validity_days is not None and dac_validity_days < 1:
        raise invalid(f"{FIELD}.dac_validity_days", "must be at least 1 (or null)")
    try:
        attestation.verify_pai(pai_cert, paa_cert)
    except AttestationError as exc:
        raise invalid(f"{FIELD}.pai_cert", f"does not chain to the PAA: {exc}") from exc
    check_cd(cd_der, cd_signing_cert, vendor_id, product_id)
    files = {PAA_FILE: _pem(paa_cert).encode(), PAI_FILE: _pem(pai_cert).encode(), CD_FILE: cd_der}
    if cd_signing_cert is not None:
        files[CD_SIGNING_FILE] = _pem(cd_signing_cert).encode()
    meta = {
        "name": name,
        "kind": kind,
        "vendor_id": vendor_id,
        "product_id": product_id,
        "dac_validity_days": dac_validity_days,
        "key_source": key_spec,
        "cd_verified": cd_signing_cert is not None,
    }
    _write_profile(name, meta, files, pai_key=pai_key, profiles_dir=profiles_dir)
    return load_profile(name, profiles_dir)


def make_test_cd(
    vendor_id: int,
    product_ids: list[int],
    cd_cert: x509.Certificate | None = None,
    cd_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, x509.Certificate]:
    """A test CD (certification_type 0) for VID/PIDs, signed by the given or a new test key."""
    if cd_cert is None or cd_key is None:
        cd_cert, cd_key = pki.make_cd_signing()
    content = cd.CdContent(
        vendor_id=vendor_id,
        product_id_array=product_ids,
        device_type_id=TEST_DEVICE_TYPE_ID,
        certificate_id=TEST_CERTIFICATE_ID,
        version_number=TEST_CD_VERSION,
        certification_type=0,
    )
    return cd.sign_cd(content, cd_cert, cd_key), cd_cert


def init_test_profile(
    name: str,
    vendor_id: int,
    product_id: int,
    *,
    profiles_dir: Path,
    paa_cert_path: Path | None = None,
    paa_key_path: Path | None = None,
    cd_cert_path: Path | None = None,
    cd_key_path: Path | None = None,
    dac_validity_days: int | None = DEFAULT_DAC_VALIDITY_DAYS,
    force: bool = False,
) -> AttestationProfile:
    """Make a test PAA (or use the given one), a PAI with a file key and a test CD; save them."""
    _check_name(name)
    if (paa_cert_path is None) != (paa_key_path is None):
        raise invalid(f"{FIELD}.paa", "--paa-cert and --paa-key go together")
    if (cd_cert_path is None) != (cd_key_path is None):
        raise invalid(f"{FIELD}.cd", "--cd-cert and --cd-key go together")
    if (profiles_dir / name).exists() and not force:
        raise invalid(FIELD, f"profile '{name}' already exists at {profiles_dir / name}")
    if paa_cert_path is not None and paa_key_path is not None:
        paa_cert = read_cert(paa_cert_path, f"{FIELD}.paa_cert")
        paa_key = read_private_key(paa_key_path, f"{FIELD}.paa_key")
        if paa_key.public_key() != paa_cert.public_key():
            raise invalid(f"{FIELD}.paa_key", "does not match the PAA certificate")
    else:
        paa_cert, paa_key = pki.make_paa(f"matterfab Test PAA {name}"[:64], vendor_id)
    pai_cert, pai_key = pki.make_pai(
        paa_cert, paa_key, vendor_id, product_id, common_name=f"matterfab Test PAI {name}"[:64]
    )
    cd_cert = cd_key = None
    if cd_cert_path is not None and cd_key_path is not None:
        cd_cert = read_cert(cd_cert_path, f"{FIELD}.cd_cert")
        cd_key = read_private_key(cd_key_path, f"{FIELD}.cd_key")
    cd_der, cd_cert = make_test_cd(vendor_id, [product_id], cd_cert, cd_key)
    return create_profile(
        name,
        vendor_id=vendor_id,
        product_id=product_id,
        pai_cert=pai_cert,
        paa_cert=paa_cert,
        cd_der=cd_der,
        cd_signing_cert=cd_cert,
        key_spec={"type": "file", "path": PAI_KEY_FILE},
        pai_key=pai_key,
        dac_validity_days=dac_validity_days,
        profiles_dir=profiles_dir,
        force=force,
        kind=KIND_TEST,
    )


def create_cd_only_profile(
    name: str,
    vendor_id: int,
    product_id: int | None,
    cd_der: bytes | None = None,
    cd_signing_cert: x509.Certificate | None = None,
    profiles_dir: Path | None = None,
    *,
    force: bool = False,
) -> AttestationProfile:
    """A CD-only profile, for orders whose modules already hold their DAC (`on-module`).

    With `cd_der` None a test CD for VID/PID is made and signed by a throwaway test CD key;
    otherwise the given CD must list the VID (and PID) and, with `cd_signing_cert`, verify.
    """
    base = profiles_dir if profiles_dir is not None else _default_profiles_dir()
    check_target(name, base, force)
    pki.check_vid(vendor_id)
    if product_id is not None:
        pki.check_pid(product_id)
    if cd_der is None:
        if cd_signing_cert is not None:
            raise invalid(f"{FIELD}.cd_signing_cert", "is only used with a given CD (--cd)")
        if product_id is None:
            raise invalid(f"{FIELD}.product_id", "is required to make a test CD (or give --cd)")
        cd_der, cd_signing_cert = make_test_cd(vendor_id, [product_id])
    check_cd(cd_der, cd_signing_cert, vendor_id, product_id)
    files = {CD_FILE: cd_der}
    if cd_signing_cert is not None:
        files[CD_SIGNING_FILE] = _pem(cd_signing_cert).encode()
    meta = {
        "name": name,
        "kind": KIND_CD_ONLY,
        "vendor_id": vendor_id,
        "product_id": product_id,
        "dac_validity_days": None,
        "key_source": None,
        "cd_verified": cd_signing_cert is not None,
    }
    _write_profile(name, meta, files, pai_key=None, profiles_dir=base)
    return load_profile(name, base)


def _kind_of(meta: dict[str, Any]) -> str:
    kind = meta.get("kind")
    if kind is None:
        # Written before `kind` existed: init-test keeps its key as the folder's pai-key.pem.
        key = meta.get("key_source")
        return KIND_TEST if key == {"type": "file", "path": PAI_KEY_FILE} else KIND_PRODUCTION
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return str(kind)


def load_profile(name: str, profiles_dir: Path | None = None) -> AttestationProfile:
    """Load profile `name`; InvalidInput('attestation_profile', ...) when unknown or broken."""
    base = profiles_dir if profiles_dir is not None else _default_profiles_dir()
    if not NAME_PATTERN.match(name):
        raise invalid(FIELD, f"unknown profile {name!r}")
    folder = base / name
    meta_path = folder / PROFILE_FILE
    if not meta_path.is_file():
        raise invalid(FIELD, f"unknown profile '{name}' (no {meta_path})")
    try:
        meta = json.loads(meta_path.read_text())
        kind = _kind_of(meta)
        cd_only = kind == KIND_CD_ONLY
        profile = AttestationProfile(
            name=meta["name"],
            vendor_id=int(meta["vendor_id"]),
            product_id=None if meta.get("product_id") is None else int(meta["product_id"]),
            pai_cert=None if cd_only else read_cert(folder / PAI_FILE, f"{FIELD}.pai_cert"),
            paa_cert=None if cd_only else read_cert(folder / PAA_FILE, f"{FIELD}.paa_cert"),
            cd_der=(folder / CD_FILE).read_bytes(),
            key_spec=None if cd_only else dict(meta["key_source"]),
            dac_validity_days=meta.get("dac_validity_days"),
            directory=folder,
            kind=kind,
        )
    except InvalidInput:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise invalid(FIELD, f"profile '{name}' at {folder} is damaged: {exc}") from exc
    return profile


def list_profiles(profiles_dir: Path | None = None) -> list[str]:
    """Names of the profiles in the folder, sorted."""
    base = profiles_dir if profiles_dir is not None else _default_profiles_dir()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / PROFILE_FILE).is_file())
