"""Re-check one finished device from its artifacts alone: what `matterfab verify` runs.

Every check reads what a device will really carry (the partition) and compares it with what
its label and the manifest say, so a label whose passcode does not open the partition's
verifier, or a partition whose DAC is not the ledger's, cannot go unnoticed.

Where the DAC is checked depends on the order's dac_storage: in the partition (factory-nvs),
in the device's esp_secure_cert.bin (secure-cert: the partition must then lack the DAC keys),
or nowhere (on-module: no DAC was issued, so none may exist and the partition holds none).
Commissionable data and the rotating device ID unique ID that a secure-cert order moved to the
esp_secure_cert partition (TLV 201) are read from there as if the partition held them; a DAC
key held in an eFuse block (ECDSA peripheral) is checked by the station that burns it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, nvs, payload, secure_cert, spake2p

NS = nvs.NAMESPACE
DAC_KEYS = frozenset(nvs.FACTORY_KEYS) - frozenset(nvs.factory_keys("on-module"))


def _value(decoded: Mapping[str, Mapping[str, tuple[str, object]]], key: str) -> Any:
    entry = decoded.get(NS, {}).get(key)
    return entry[1] if entry else None


_MATTER_AS_NVS = {
    secure_cert.MatterSubtype.DISCRIMINATOR: ("discriminator", "u32"),
    secure_cert.MatterSubtype.VERIFIER: ("verifier", "string"),
    secure_cert.MatterSubtype.SALT: ("salt", "string"),
    secure_cert.MatterSubtype.ITERATION_COUNT: ("iteration-count", "u32"),
    secure_cert.MatterSubtype.RD_ID_UID: ("rd-id-uid", "blob"),
}


def _with_secure_cert_values(
    decoded: dict[str, dict[str, tuple[str, object]]], cert_image: bytes | None
) -> dict[str, dict[str, tuple[str, object]]]:
    """`decoded` plus the TLV 201 values of the esp_secure_cert image, in NVS form."""
    if cert_image is None:
        return decoded
    try:
        entries = secure_cert.decode_entries(cert_image)
    except InvalidInput:
        return decoded  # reported by the DAC checks
    ns = dict(decoded.get(NS, {}))
    for e in entries:
        if e.type != secure_cert.TlvType.MATTER or e.subtype not in _MATTER_AS_NVS:
            continue
        key, kind = _MATTER_AS_NVS[secure_cert.MatterSubtype(e.subtype)]
        value: object = e.data
        if kind == "u32":
            value = int.from_bytes(e.data, "little")
        elif kind == "string":
            value = base64.b64encode(e.data).decode()
        ns.setdefault(key, (kind, value))
    return {**decoded, NS: ns}


def audit_device(
    row: Mapping[str, Any],
    partition: bytes,
    dac_der: bytes | None,
    *,
    nvs_keys: bytes | None = None,
    paa: x509.Certificate | None = None,
    secure_cert_image: bytes | None = None,
    dac_storage: str = "factory-nvs",
) -> list[str]:
    """Problems found with one device (empty when it is sound).

    `row` is the device's manifest row (serial_num, vendor_id, product_id, discriminator,
    passcode, qr_payload, manual_code, rd_id_uid, dac_serial). `dac_der` is its dac.der (None:
    there is none), `secure_cert_image` its esp_secure_cert.bin (None: there is none).
    """
    problems: list[str] = []
    try:
        decoded = nvs.decode_partition(partition, keys=nvs_keys)
    except InvalidInput as exc:
        return [f"partition does not decode: {exc}"]
    if dac_storage == "secure-cert":
        decoded = _with_secure_cert_values(decoded, secure_cert_image)

    def expect(key: str, want: object) -> None:
        got = _value(decoded, key)
        if got != want:
            problems.append(f"partition {key} is {got!r}, manifest says {want!r}")

    expect("discriminator", int(row["discriminator"]))
    expect("vendor-id", int(row["vendor_id"]))
    expect("product-id", int(row["product_id"]))
    expect("serial-num", row["serial_num"])
    if row.get("rd_id_uid"):
        expect("rd-id-uid", bytes.fromhex(row["rd_id_uid"]))

    if row.get("passcode") == "dynamic":  # onboarding.DYNAMIC: the firmware makes its passcode
        if _value(decoded, "verifier") is not None:
            problems.append("partition holds a verifier, but the passcode is dynamic")
        problems += _audit_dac_storage(decoded, row, dac_der, secure_cert_image, dac_storage, paa)
        return problems
    passcode = int(row["passcode"])
    salt_b64 = _value(decoded, "salt")
    verifier_b64 = _value(decoded, "verifier")
    iterations = _value(decoded, "iteration-count")
    if not (salt_b64 and verifier_b64 and iterations):
        problems.append("partition lacks salt, verifier or iteration-count")
    elif not spake2p.verify_verifier(
        passcode, base64.b64decode(salt_b64), iterations, base64.b64decode(verifier_b64)
    ):
        problems.append("the manifest's passcode does not match the partition's SPAKE2+ verifier")

    try:
        qr = payload.decode_qr(row["qr_payload"])
        if (qr.vendor_id, qr.product_id, qr.discriminator, qr.passcode) != (
            int(row["vendor_id"]),
            int(row["product_id"]),
            int(row["discriminator"]),
            passcode,
        ):
            problems.append(
                "QR payload does not carry the device's VID, PID, discriminator, passcode"
            )
        manual = payload.decode_manual(row["manual_code"])
        if manual.passcode != passcode or manual.short_discriminator != payload.short_discriminator(
            int(row["discriminator"])
        ):
            problems.append("manual code does not carry the device's passcode and discriminator")
    except InvalidInput as exc:
        problems.append(f"onboarding code does not decode: {exc}")

    problems += _audit_dac_storage(decoded, row, dac_der, secure_cert_image, dac_storage, paa)
    return problems


def _audit_dac_storage(
    decoded: Mapping[str, Mapping[str, tuple[str, object]]],
    row: Mapping[str, Any],
    dac_der: bytes | None,
    cert_image: bytes | None,
    dac_storage: str,
    paa: x509.Certificate | None,
) -> list[str]:
    """The DAC where the order's dac_storage puts it, and nowhere else."""
    problems: list[str] = []
    if dac_storage != "secure-cert" and cert_image is not None:
        problems.append(f"esp_secure_cert.bin exists, but dac_storage is {dac_storage}")
    if dac_storage == "factory-nvs":
        if dac_der is None:
            return [*problems, "dac.der is missing"]
        held = Held(
            "partition",
            _value(decoded, "dac-cert"),
            _value(decoded, "pai-cert"),
            _value(decoded, "dac-key"),
            _value(decoded, "dac-pub-key") or b"",  # absent: reported as differing
        )
        return problems + _audit_attestation(row, dac_der, held, paa)
    in_nvs = sorted(DAC_KEYS & set(decoded.get(NS, {})))
    if in_nvs:
        problems.append(f"partition holds {', '.join(in_nvs)}: dac_storage {dac_storage} has none")
    if dac_storage in nvs.NO_DAC_AT_BUILD:  # device-key: the DAC comes on the line, if at all
        none = "issue no DAC" + (" at build" if dac_storage == "device-key" else "")
        if dac_der is not None:
            problems.append(f"dac.der exists, but {dac_storage} orders {none}")
        if row.get("dac_serial"):
            problems.append(f"the manifest gives a dac_serial, but {dac_storage} orders {none}")
        return problems
    if dac_der is None:
        return [*problems, "dac.der is missing"]
    if cert_image is None:
        return [*problems, "esp_secure_cert.bin is missing (dac_storage secure-cert)"]
    try:
        read = secure_cert.read_secure_cert(cert_image)
    except InvalidInput as exc:
        return [*problems, f"esp_secure_cert.bin does not decode: {exc}"]
    held = Held("esp_secure_cert.bin", read.dac_cert, read.pai_cert, read.dac_key_raw, None)
    if read.efuse_block is not None:  # ECDSA peripheral: the key is in an eFuse block
        held = dataclasses.replace(held, key_raw=None)
    return problems + _audit_attestation(row, dac_der, held, paa)


@dataclass(frozen=True)
class Held:
    """The attestation data a device carries, and where (partition or esp_secure_cert.bin)."""

    where: str
    dac: object  # DER bytes (anything else: absent or mistyped)
    pai: object  # DER bytes
    key_raw: object  # 32-byte private scalar
    pub_raw: object  # 65-byte point; None where not stored separately (esp_secure_cert)


def _audit_attestation(
    row: Mapping[str, Any],
    dac_der: bytes,
    held: Held,
    paa: x509.Certificate | None,
) -> list[str]:
    problems: list[str] = []
    if held.dac != dac_der:
        problems.append(f"the {held.where}'s DAC differs from dac.der")
    dac = x509.load_der_x509_certificate(dac_der)
    if attestation.serial_hex(dac.serial_number) != row["dac_serial"]:
        problems.append("dac.der's serial differs from the manifest's dac_serial")
    pai_der = held.pai
    if not isinstance(pai_der, bytes):
        return [*problems, f"{held.where} lacks pai-cert"]
    pai = x509.load_der_x509_certificate(pai_der)
    try:
        attestation.verify_dac(
            dac, pai, vendor_id=int(row["vendor_id"]), product_id=int(row["product_id"])
        )
        if paa is not None:
            attestation.verify_chain(dac, pai, paa)
    except AttestationError as exc:
        problems.append(f"attestation chain: {exc}")
    key_raw = held.key_raw
    cert_pub = dac.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if held.pub_raw is not None and held.pub_raw != cert_pub:
        problems.append("dac-pub-key differs from the DAC's public key")
    if key_raw is None and held.where == "esp_secure_cert.bin":
        pass  # in an eFuse block (ECDSA peripheral): the station checked what it burned
    elif isinstance(key_raw, bytes) and len(key_raw) == 32:
        derived = ec.derive_private_key(int.from_bytes(key_raw, "big"), ec.SECP256R1())
        if (
            derived.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            != cert_pub
        ):
            problems.append("dac-key is not the DAC's private key")
    else:
        problems.append(f"{held.where} lacks a 32-byte dac-key")
    return problems


def sha256_hex(data: bytes) -> str:
    """SHA-256 of bytes, hex."""
    return hashlib.sha256(data).hexdigest()
