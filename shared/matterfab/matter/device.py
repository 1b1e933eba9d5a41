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


@dataclass(frozen=True)
class DeviceArtifacts:
    """What the builder stores for one device."""

    partition: bytes
    nvs_keys: bytes | None
    qr_payload: str
    manual_code: str
    qrcode_png: bytes
    secure_cert: bytes | None = None  # esp_secure_cert.bin (dac_storage secure-cert)


def dac_public_key_raw(dac_der: bytes) -> bytes:
    """The DAC's public key as the 65-byte uncompressed point NVS stores in `dac-pub-key`."""
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
    verifier = spake2p.compute_verifier(inputs.passcode, f.salt, f.iteration_count)
    data = dataclasses.replace(f, verifier=verifier)
    image = nvs.build_partition(data, inputs.partition_size, xts_key=inputs.xts_key)
    cert_image = (
        secure_cert.build_secure_cert(f.dac_cert, f.pai_cert, f.dac_key)
        if f.dac_storage == "secure-cert"
        else None
    )
    qr, manual = onboarding_codes(
        f.vendor_id, f.product_id, inputs.flow, inputs.discovery, f.discriminator, inputs.passcode
    )
    return DeviceArtifacts(
        partition=image.image,
        nvs_keys=image.keys,
        qr_payload=qr,
        manual_code=manual,
        qrcode_png=label.qr_png(qr),
        secure_cert=cert_image,
    )


def build_devices(inputs: Sequence[DeviceInputs]) -> list[DeviceArtifacts]:
    """`build_device` for each of several devices (a lot), in order."""
    return [build_device(one) for one in inputs]
