"""Everything one device gets, computed from its identity and DAC: the per-device pure core.

SPAKE2+ verifier (PBKDF2, the costly part) → NVS factory partition (encrypted when an XTS key
is given) → esp_secure_cert partition (dac_storage secure-cert) → onboarding payload, manual
code and QR label. Same inputs, same bytes: the builder
relies on it to make redelivered work a no-op against write-once storage. `build_devices`
builds a lot's devices in one call: the builder's one worker task per lot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import load_der_x509_certificate

from matterfab.matter import label, nvs, payload, secure_cert, spake2p

FLOWS = {
    "standard": payload.CommissioningFlow.STANDARD,
    "user-intent": payload.CommissioningFlow.USER_INTENT,
    "custom": payload.CommissioningFlow.CUSTOM,
}


@dataclass(frozen=True)
class DeviceInputs:
    """One device's identity, attestation and product data."""

    factory: nvs.FactoryData  # verifier left empty: build_device computes it
    passcode: int
    flow: str
    discovery: tuple[str, ...]
    partition_size: int
    xts_key: bytes | None = None
    dynamic_passcode: bool = False  # no verifier, no QR or manual code
    efuse_key_id: int | None = None  # secure-cert ECDSA peripheral: the DAC key's eFuse block


@dataclass(frozen=True)
class DeviceArtifacts:
    """What the builder stores for one device."""

    partition: bytes
    nvs_keys: bytes | None
    qr_payload: str
    manual_code: str
    qrcode_png: bytes
    secure_cert: bytes | None = None  # esp_secure_cert.bin (dac_storage secure-cert)
    efuse_key: bytes | None = None  # the DAC key for the station's eFuse burn (ecdsa-peripheral)


# A P-256 SubjectPublicKeyInfo with an uncompressed point, up to the point's 64 coordinate
# bytes: SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes) 00 04 ...}.
# Every DAC is P-256 (the signer issues and verifies them, verify_dac); the Matter profile fixes
# this encoding (§6.2.2.5, uncompressed points only).
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")


def dac_public_key_raw(dac_der: bytes) -> bytes:
    """The DAC's public key as the 65-byte uncompressed point NVS stores in `dac-pub-key`.

    Read from the P-256 SubjectPublicKeyInfo's bytes when they occur exactly once in the
    certificate (~1 us; parsing the whole certificate with `cryptography` took ~15 us a device
    in the builder's main process, issue #26). Anything else (another key type, the bytes seen
    twice or cut short) goes through `cryptography`, which also refuses what is not a
    certificate. Tests compare both on issued DACs.
    """
    at = dac_der.find(P256_SPKI_PREFIX)
    end = at + len(P256_SPKI_PREFIX) + 64
    if at >= 0 and end <= len(dac_der) and dac_der.find(P256_SPKI_PREFIX, at + 1) < 0:
        return dac_der[end - 65 : end]
    return dac_public_key_parsed(dac_der)


def dac_public_key_parsed(dac_der: bytes) -> bytes:
    """`dac_public_key_raw` by parsing the certificate with `cryptography` (the reference)."""
    key = load_der_x509_certificate(dac_der).public_key()
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def onboarding_codes(
    vendor_id: int,
    product_id: int,
    flow: str,
    discovery: tuple[str, ...],
    discriminator: int,
    passcode: int,
) -> tuple[str, str]:
    """The QR payload (`MT:…`) and the manual pairing code of a device."""
    setup = payload.SetupPayload(
        vendor_id=vendor_id,
        product_id=product_id,
        flow=FLOWS[flow],
        discovery=payload.Discovery.from_names(discovery),
        discriminator=discriminator,
        passcode=passcode,
    )
    return payload.encode_qr(setup), payload.encode_manual(setup)


def build_device(inputs: DeviceInputs) -> DeviceArtifacts:
    """Compute a device's partition image, onboarding codes and QR label."""
    f = inputs.factory
    verifier = None
    if not inputs.dynamic_passcode:
        verifier = spake2p.compute_verifier(inputs.passcode, f.salt, f.iteration_count)
    data = dataclasses.replace(f, verifier=verifier)
    image = nvs.build_partition(data, inputs.partition_size, xts_key=inputs.xts_key)
    cert_image = _secure_cert(data, inputs.efuse_key_id) if f.dac_storage == "secure-cert" else None
    qr = manual = ""
    png = b""
    if not inputs.dynamic_passcode:
        qr, manual = onboarding_codes(
            f.vendor_id,
            f.product_id,
            inputs.flow,
            inputs.discovery,
            f.discriminator,
            inputs.passcode,
        )
        png = label.qr_png(qr)
    return DeviceArtifacts(
        partition=image.image,
        nvs_keys=image.keys,
        qr_payload=qr,
        manual_code=manual,
        qrcode_png=png,
        secure_cert=cert_image,
        efuse_key=f.dac_key if inputs.efuse_key_id is not None else None,
    )


def _secure_cert(data: nvs.FactoryData, efuse_key_id: int | None) -> bytes:
    """The esp_secure_cert image of a device whose FactoryData has its verifier."""
    commissionable = None
    if data.commissionable_in_secure_cert:
        commissionable = secure_cert.Commissionable(
            data.discriminator, data.verifier, data.salt, data.iteration_count
        )
    return secure_cert.build_secure_cert(
        data.dac_cert,
        data.pai_cert,
        data.dac_key,
        commissionable=commissionable,
        rd_id_uid=data.rd_id_uid if data.rd_id_uid_in_secure_cert else None,
        efuse_key_id=efuse_key_id,
    )


def build_devices(inputs: Sequence[DeviceInputs]) -> list[DeviceArtifacts]:
    """`build_device` for each of several devices (a lot), in order."""
    return [build_device(one) for one in inputs]
