"""Re-check one finished device from its artifacts alone: what `matterfab verify` runs.

Every check reads what a device will really carry (the partition) and compares it with what
its label and the manifest say, so a label whose passcode does not open the partition's
verifier, or a partition whose DAC is not the ledger's, cannot go unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, nvs, payload, spake2p

NS = nvs.NAMESPACE


def _value(decoded: Mapping[str, Mapping[str, tuple[str, object]]], key: str) -> Any:
    entry = decoded.get(NS, {}).get(key)
    return entry[1] if entry else None


def audit_device(
    row: Mapping[str, Any],
    partition: bytes,
    dac_der: bytes,
    *,
    nvs_keys: bytes | None = None,
    paa: x509.Certificate | None = None,
) -> list[str]:
    """Problems found with one device (empty when it is sound).

    `row` is the device's manifest row (serial_num, vendor_id, product_id, discriminator,
    passcode, qr_payload, manual_code, rd_id_uid, dac_serial).
    """
    problems: list[str] = []
    try:
        decoded = nvs.decode_partition(partition, keys=nvs_keys)
    except InvalidInput as exc:
        return [f"partition does not decode: {exc}"]

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

    problems += _audit_attestation(decoded, row, dac_der, paa)
    return problems


def _audit_attestation(
    decoded: Mapping[str, Mapping[str, tuple[str, object]]],
    row: Mapping[str, Any],
    dac_der: bytes,
    paa: x509.Certificate | None,
) -> list[str]:
    problems: list[str] = []
    part_dac = _value(decoded, "dac-cert")
    if part_dac != dac_der:
        problems.append("the partition's DAC differs from dac.der")
    dac = x509.load_der_x509_certificate(dac_der)
    if attestation.serial_hex(dac.serial_number) != row["dac_serial"]:
        problems.append("dac.der's serial differs from the manifest's dac_serial")
    pai_der = _value(decoded, "pai-cert")
    if not isinstance(pai_der, bytes):
        return [*problems, "partition lacks pai-cert"]
    pai = x509.load_der_x509_certificate(pai_der)
    try:
        attestation.verify_dac(
            dac, pai, vendor_id=int(row["vendor_id"]), product_id=int(row["product_id"])
        )
        if paa is not None:
            attestation.verify_chain(dac, pai, paa)
    except AttestationError as exc:
        problems.append(f"attestation chain: {exc}")
    key_raw = _value(decoded, "dac-key")
    pub_raw = _value(decoded, "dac-pub-key")
    cert_pub = dac.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if pub_raw != cert_pub:
        problems.append("dac-pub-key differs from the DAC's public key")
    if isinstance(key_raw, bytes) and len(key_raw) == 32:
        derived = ec.derive_private_key(int.from_bytes(key_raw, "big"), ec.SECP256R1())
        if (
            derived.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            != cert_pub
        ):
            problems.append("dac-key is not the DAC's private key")
    else:
        problems.append("partition lacks a 32-byte dac-key")
    return problems


def sha256_hex(data: bytes) -> str:
    """SHA-256 of bytes, hex."""
    return hashlib.sha256(data).hexdigest()
