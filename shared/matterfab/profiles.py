"""Attestation profiles: the PAI, its key source, the PAA it chains to and the CD, on disk.

A profile is a folder `<profiles_dir>/<name>/`:
  profile.json    name, vendor_id, product_id (or null: any PID the PAI allows),
                  dac_validity_days (null: up to the PAI's notAfter), key_source, created_at
  paa.pem         the PAA certificate the chain ends at (what commissioners must trust)
  pai.pem         the PAI certificate
  pai-key.pem     the PAI private key, mode 0600, only for a file key source
  cd.der          the Certification Declaration (CMS DER)
  cd-signing.pem  the certificate whose key signed the CD (public)
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

from matterfab.errors import AttestationError, InvalidInput, invalid
from matterfab.keysource import load_signer, read_private_key
from matterfab.matter import attestation, cd, pki
from matterfab.matter.attestation import PaiSigner

FIELD = "attestation_profile"
PROFILES_ENV = "MATTERFAB_PROFILES_DIR"
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


@dataclass
class AttestationProfile:
    """An attestation profile as loaded from its folder (the key stays behind `key_spec`)."""

    name: str
    vendor_id: int
    product_id: int | None
    pai_cert: x509.Certificate
    paa_cert: x509.Certificate
    cd_der: bytes
    key_spec: dict[str, Any]
    dac_validity_days: int | None
    directory: Path

    def signer(self) -> PaiSigner:
        """Open the PAI key source and check it matches the PAI certificate."""
        signer = load_signer(self.key_spec, base_dir=self.directory)
        if signer.public_key() != self.pai_cert.public_key():
            raise invalid(f"{FIELD}.key_source", f"profile '{self.name}': key does not match PAI")
        return signer

    def public_summary(self) -> dict[str, Any]:
        """What may be published: IDs, PAI/PAA PEM and the CD, never key material or PINs."""
        return {
            "name": self.name,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "dac_validity_days": self.dac_validity_days,
            "pai_pem": _pem(self.pai_cert),
            "paa_pem": _pem(self.paa_cert),
            "cd_der_base64": base64.b64encode(self.cd_der).decode("ascii"),
            "key_source_type": self.key_spec.get("type"),
        }


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def profiles_dir() -> Path:
    """$MATTERFAB_PROFILES_DIR, else `<state dir>/profiles`."""
    return _default_profiles_dir()


def _default_profiles_dir() -> Path:
    # Separate name: the functions below take a `profiles_dir` argument that shadows the public one.
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from matterfab.config import state_dir  # lazily: config pulls in pydantic-settings

    return state_dir() / "profiles"


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise invalid(FIELD, f"profile name must be 1..64 of [A-Za-z0-9._-], got {name!r}")


def _read_cert(path: Path, what: str) -> x509.Certificate:
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


def create_profile(
    name: str,
    *,
    vendor_id: int,
    product_id: int | None,
    pai_cert: x509.Certificate,
    paa_cert: x509.Certificate,
    cd_der: bytes,
    cd_signing_cert: x509.Certificate,
    key_spec: dict[str, Any],
    pai_key: ec.EllipticCurvePrivateKey | None = None,
    dac_validity_days: int | None = DEFAULT_DAC_VALIDITY_DAYS,
    profiles_dir: Path,
    force: bool = False,
) -> AttestationProfile:
    """Check the parts fit together and write the profile folder (atomically, by rename)."""
    _check_name(name)
    if dac_validity_days is not None and dac_validity_days < 1:
        raise invalid(f"{FIELD}.dac_validity_days", "must be at least 1 (or null)")
    try:
        attestation.verify_pai(pai_cert, paa_cert)
    except AttestationError as exc:
        raise invalid(f"{FIELD}.pai_cert", f"does not chain to the PAA: {exc}") from exc
    content = cd.verify_cd(cd_der, cd_signing_cert)
    if content.vendor_id != vendor_id:
        raise invalid(f"{FIELD}.cd", f"CD vendor_id 0x{content.vendor_id:04X} is not the VID")
    if product_id is not None and product_id not in content.product_id_array:
        raise invalid(f"{FIELD}.cd", f"CD does not list product_id 0x{product_id:04X}")
    target = profiles_dir / name
    if target.exists() and not force:
        raise invalid(FIELD, f"profile '{name}' already exists at {target} (use --force)")
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
        (staging / PAA_FILE).write_text(_pem(paa_cert))
        (staging / PAI_FILE).write_text(_pem(pai_cert))
        (staging / CD_SIGNING_FILE).write_text(_pem(cd_signing_cert))
        (staging / CD_FILE).write_bytes(cd_der)
        meta = {
            "name": name,
            "vendor_id": vendor_id,
            "product_id": product_id,
            "dac_validity_days": dac_validity_days,
            "key_source": key_spec,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / PROFILE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        # Certificates and the CD are public (commissioners need paa.pem); the key file is 0600.
        os.chmod(staging, 0o755)  # noqa: S103
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_profile(name, profiles_dir)


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
        paa_cert = _read_cert(paa_cert_path, f"{FIELD}.paa_cert")
        paa_key = read_private_key(paa_key_path, f"{FIELD}.paa_key")
        if paa_key.public_key() != paa_cert.public_key():
            raise invalid(f"{FIELD}.paa_key", "does not match the PAA certificate")
    else:
        paa_cert, paa_key = pki.make_paa(f"matterfab Test PAA {name}"[:64], vendor_id)
    pai_cert, pai_key = pki.make_pai(
        paa_cert, paa_key, vendor_id, product_id, common_name=f"matterfab Test PAI {name}"[:64]
    )
    if cd_cert_path is not None and cd_key_path is not None:
        cd_cert = _read_cert(cd_cert_path, f"{FIELD}.cd_cert")
        cd_key = read_private_key(cd_key_path, f"{FIELD}.cd_key")
    else:
        cd_cert, cd_key = pki.make_cd_signing()
    content = cd.CdContent(
        vendor_id=vendor_id,
        product_id_array=[product_id],
        device_type_id=TEST_DEVICE_TYPE_ID,
        certificate_id=TEST_CERTIFICATE_ID,
        version_number=TEST_CD_VERSION,
        certification_type=0,
    )
    return create_profile(
        name,
        vendor_id=vendor_id,
        product_id=product_id,
        pai_cert=pai_cert,
        paa_cert=paa_cert,
        cd_der=cd.sign_cd(content, cd_cert, cd_key),
        cd_signing_cert=cd_cert,
        key_spec={"type": "file", "path": PAI_KEY_FILE},
        pai_key=pai_key,
        dac_validity_days=dac_validity_days,
        profiles_dir=profiles_dir,
        force=force,
    )


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
        profile = AttestationProfile(
            name=meta["name"],
            vendor_id=int(meta["vendor_id"]),
            product_id=None if meta.get("product_id") is None else int(meta["product_id"]),
            pai_cert=_read_cert(folder / PAI_FILE, f"{FIELD}.pai_cert"),
            paa_cert=_read_cert(folder / PAA_FILE, f"{FIELD}.paa_cert"),
            cd_der=(folder / CD_FILE).read_bytes(),
            key_spec=dict(meta["key_source"]),
            dac_validity_days=meta.get("dac_validity_days"),
            directory=folder,
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
