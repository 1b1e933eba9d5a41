"""DACs bought from a PKI vendor: read certificate/key pairs and check them before import.

Each pair gets the checks esp-matter-mfg-tool 1.0.29 applies to `--dac-cert/--dac-key`
(sources/cert_utils.py, reference §1c): X.509 v3 signed with ecdsa-with-SHA256 by the
profile's PAI (issuer = PAI subject, AKID = PAI SKID, signature), P-256, VendorID and
ProductID in the subject equal to the profile's (and the PAI's VID/PID constraints),
BasicConstraints critical CA:FALSE, KeyUsage critical digitalSignature only, SKID present,
validity inside the PAI's and including now, and the private key matching the certificate.
Unlike the tool, every pair of a batch is checked and a batch with any bad pair is refused
whole, naming the pair.

Inputs: `--certs` and `--keys` are each a file (PEM with one or more certificates / keys, or
one DER) or a directory. In directories, pairs match by file stem: `dac-0001.pem` (or `.der`,
`.crt`) with `dac-0001.pem`/`.der`/`.key` in the keys directory, or `dac-0001-key.pem`; a
single PEM file of N certificates pairs with a PEM file of N keys in order.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from matterfab.errors import AttestationError, FieldError, InvalidInput, invalid
from matterfab.matter import attestation

CERT_SUFFIXES = (".pem", ".der", ".crt", ".cer")
KEY_SUFFIXES = (".pem", ".der", ".key")
MAX_BATCH = 1_000_000
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.S)


@dataclass(frozen=True)
class DacPair:
    """One DAC and its key as read, named for error messages (file, or file#n)."""

    name: str
    cert_der: bytes
    key: ec.EllipticCurvePrivateKey | None  # None: the key file did not parse (reported)
    key_problem: str | None = None


@dataclass(frozen=True)
class CheckedDac:
    """A DAC that passed every check: what the pool stores (the key still in the clear)."""

    name: str
    der: bytes
    key_raw: bytes  # 32-byte private scalar
    serial: str  # hex, as the ledger writes it
    fingerprint: str  # SHA-256 of the uncompressed public key: one DAC per key

    @property
    def not_after(self) -> datetime:
        """The DAC's notAfter (UTC)."""
        return x509.load_der_x509_certificate(self.der).not_valid_after_utc


def fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the 65-byte uncompressed point: equal keys, equal fingerprints."""
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha256(point).hexdigest()


def _certs_in(data: bytes) -> list[bytes]:
    if b"-----BEGIN" in data:
        return [
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(data)
        ]
    return [x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)]


def _keys_in(data: bytes) -> list[ec.EllipticCurvePrivateKey | str]:
    pem = b"-----BEGIN" in data
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data)] if pem else [data]
    out: list[ec.EllipticCurvePrivateKey | str] = []
    for block in blocks:
        if b"PARAMETERS" in block.split(b"\n", 1)[0]:
            continue  # `openssl ecparam -genkey` writes EC PARAMETERS before the key
        try:
            if pem:
                key = serialization.load_pem_private_key(block, password=None)
            else:
                key = serialization.load_der_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            out.append(f"is not an unencrypted private key ({exc})")
            continue
        out.append(key if isinstance(key, ec.EllipticCurvePrivateKey) else "is not an EC key")
    return out


def _stem(path: Path) -> str:
    stem = path.stem
    for tail in ("-key", "_key", ".key"):
        if stem.endswith(tail):
            return stem[: -len(tail)]
    return stem


def read_pairs(certs: Path, keys: Path) -> list[DacPair]:
    """The certificate/key pairs under `certs` and `keys` (module docstring); InvalidInput
    naming the file when one does not parse or has no partner."""
    try:
        if certs.is_dir() != keys.is_dir():
            raise invalid("--keys", "must be a directory when --certs is one, a file otherwise")
        if certs.is_dir():
            return _read_dirs(certs, keys)
        found = _certs_in(certs.read_bytes())
        found_keys = _keys_in(keys.read_bytes())
    except OSError as exc:
        raise invalid("--certs", f"cannot read: {exc}") from None
    except ValueError as exc:
        raise invalid("--certs", f"{certs} holds no readable certificate ({exc})") from None
    if len(found) != len(found_keys):
        raise invalid(
            "--keys", f"{keys} holds {len(found_keys)} keys for {len(found)} certificates"
        )
    pairs = []
    for n, (der, key) in enumerate(zip(found, found_keys, strict=True)):
        name = certs.name if len(found) == 1 else f"{certs.name}#{n + 1}"
        pairs.append(_pair(name, der, key))
    return pairs


def _pair(name: str, der: bytes, key: ec.EllipticCurvePrivateKey | str) -> DacPair:
    if isinstance(key, str):
        return DacPair(name, der, None, f"key {key}")
    return DacPair(name, der, key)


def _read_dirs(certs: Path, keys: Path) -> list[DacPair]:
    key_files = {_stem(p): p for p in sorted(keys.iterdir()) if p.suffix in KEY_SUFFIXES}
    pairs = []
    for path in sorted(certs.iterdir()):
        if path.suffix not in CERT_SUFFIXES or not path.is_file():
            continue
        stem = _stem(path)
        key_path = key_files.pop(stem, None)
        if key_path is None or key_path == path:
            raise invalid("--keys", f"{path.name}: no key file {stem}.pem/.der/.key in {keys}")
        try:
            (der,) = _certs_in(path.read_bytes())
        except ValueError as exc:
            raise invalid("--certs", f"{path.name}: not one certificate ({exc})") from None
        found = _keys_in(key_path.read_bytes())
        if len(found) != 1:
            raise invalid("--keys", f"{key_path.name}: must hold exactly one private key")
        pairs.append(_pair(path.name, der, found[0]))
    if key_files:
        raise invalid("--keys", f"{sorted(key_files)[0]}: a key without a certificate")
    if not pairs:
        raise invalid("--certs", f"{certs} holds no certificate files ({', '.join(CERT_SUFFIXES)})")
    return pairs


def check_pair(
    pair: DacPair,
    pai: x509.Certificate,
    vendor_id: int,
    product_id: int | None,
    now: datetime | None = None,
) -> CheckedDac:
    """The pair as a CheckedDac; AttestationError saying which rule it breaks."""
    now = now or datetime.now(UTC)
    try:
        dac = x509.load_der_x509_certificate(pair.cert_der)
    except ValueError as exc:
        raise AttestationError(f"not a certificate ({exc})") from None
    if dac.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        raise AttestationError("DAC must be signed with ecdsa-with-SHA256")
    if dac.issuer != pai.subject:
        raise AttestationError("DAC issuer is not the profile's PAI subject")
    try:
        akid = dac.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        pai_skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise AttestationError("DAC lacks authorityKeyIdentifier (or PAI its SKID)") from None
    if akid.value.key_identifier != pai_skid.value.digest:
        raise AttestationError("DAC authorityKeyIdentifier is not the PAI's subjectKeyIdentifier")
    pid = product_id
    if pid is None:  # a VID-only profile: the DAC's own PID, checked against the PAI below
        pid = attestation.subject_matter_id(dac.subject, attestation.PRODUCT_ID_OID, "DAC PID")
    attestation.verify_dac(dac, pai, vendor_id=vendor_id, product_id=pid)
    if not dac.not_valid_before_utc <= now <= dac.not_valid_after_utc:
        raise AttestationError(
            f"DAC is not valid now ({dac.not_valid_before_utc:%Y-%m-%d} .. "
            f"{dac.not_valid_after_utc:%Y-%m-%d})"
        )
    if dac.not_valid_after_utc > pai.not_valid_after_utc:
        raise AttestationError("DAC notAfter must lie within the PAI's validity")
    if pair.key is None:
        raise AttestationError(pair.key_problem or "key is missing")
    if not isinstance(pair.key.curve, ec.SECP256R1):
        raise AttestationError("key must be EC P-256")
    public = dac.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # verify_dac checked P-256
    if fingerprint(pair.key.public_key()) != fingerprint(public):
        raise AttestationError("key does not match the certificate")
    # A signature made with the key verifies with the certificate: the key really works.
    probe = pair.key.sign(b"matterfab dac import", ec.ECDSA(hashes.SHA256()))
    public.verify(probe, b"matterfab dac import", ec.ECDSA(hashes.SHA256()))
    return CheckedDac(
        name=pair.name,
        der=pair.cert_der,
        key_raw=pair.key.private_numbers().private_value.to_bytes(32, "big"),
        serial=attestation.serial_hex(dac.serial_number),
        fingerprint=fingerprint(public),
    )


def check_batch(
    pairs: list[DacPair],
    pai: x509.Certificate,
    vendor_id: int,
    product_id: int | None,
    now: datetime | None = None,
) -> list[CheckedDac]:
    """Every pair checked; InvalidInput naming each bad pair (and duplicates within the batch)."""
    if not pairs:
        raise invalid("--certs", "holds no DAC")
    if len(pairs) > MAX_BATCH:
        raise invalid("--certs", f"holds {len(pairs)} DACs; a batch is at most {MAX_BATCH}")
    errors: list[FieldError] = []
    checked: list[CheckedDac] = []
    seen: dict[str, str] = {}
    for pair in pairs:
        try:
            dac = check_pair(pair, pai, vendor_id, product_id, now)
        except AttestationError as exc:
            errors.append(FieldError(pair.name, str(exc)))
            continue
        if dac.fingerprint in seen:
            errors.append(FieldError(pair.name, f"has the same key as {seen[dac.fingerprint]}"))
            continue
        seen[dac.fingerprint] = pair.name
        checked.append(dac)
    if errors:
        raise InvalidInput(errors[:50])
    return checked
