"""`mfg.dac.requests` / `mfg.dac.replies`: device-born keys certified on the line (device-key).

A station that flashed a `dac_storage: device-key` device sends the CSR the device printed
(`DacRequest`, keyed by `device_id`); the signer answers on the reply topic (`DacReply`, keyed
by `device_id`) with the DAC over that key, or a one-line refusal. Only public material
travels: the device's private key never leaves it.

The signer's state for these DACs is two kinds of write-once objects (typed here too):
`DeviceKeyDac` per device and generation (the DAC it holds) and `KeyClaim` per product and
public key (which device holds that key): `put_once` on each makes the claims atomic across
signer instances. See docs/device-key.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from matterfab.bucket.keys import device_dac_key as device_dac_key
from matterfab.bucket.keys import device_dacs_prefix as device_dacs_prefix
from matterfab.bucket.keys import key_claim_key as key_claim_key
from matterfab.messages.base import DeviceIndex, Message, OrderId, utcnow

SHA256_PATTERN = r"^[0-9a-f]{64}$"
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"


class DacRequest(Message):
    """A device's CSR, carried by the station that holds it (`dac-request/v1`)."""

    type: Literal["dac-request/v1"] = "dac-request/v1"
    request_id: str = Field(
        pattern=REQUEST_ID_PATTERN, description="Random id the reply echoes (uuid4 hex)"
    )
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    serial_num: str
    station_id: str = Field(description="The station waiting for the reply")
    line: str = Field(description="The station's production line")
    csr_pem: str = Field(max_length=4096, description="PEM PKCS#10 CERTIFICATE REQUEST")
    at: datetime = Field(default_factory=utcnow)


class DacReply(Message):
    """The signer's answer to one DacRequest (`dac-reply/v1`)."""

    type: Literal["dac-reply/v1"] = "dac-reply/v1"
    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="The request's id")
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    station_id: str
    status: Literal["issued", "refused"]
    reason: str = Field("", description="Why it was refused (one line); empty when issued")
    dac_b64: str = Field("", description="The DAC, DER, base64 (issued)")
    pai_b64: str = Field("", description="The issuing PAI, DER, base64 (issued)")
    dac_serial: str = Field("", description="DAC serial number, hex (issued)")
    dac_sha256: str = Field("", description="SHA-256 of the DAC DER, hex (issued)")
    generation: int = Field(0, ge=0, description="The device's DAC generation (0: its first)")
    at: datetime = Field(default_factory=utcnow)


class DeviceKeyDac(Message):
    """The DAC a device-key device holds, one write-once object per device and generation.

    Generation 0 is the device's first DAC. `device reissue` (after the old DAC is revoked,
    superseded) may let the device present a new key as generation + 1: the signer's rule is
    `DeviceKeyRecords.current_generation`.
    """

    type: Literal["device-key-dac/v1"] = "device-key-dac/v1"
    order_id: OrderId
    device_id: str
    index: DeviceIndex
    generation: int = Field(ge=0)
    attestation_profile: str
    vendor_id: int
    product_id: int
    public_key_sha256: str = Field(
        pattern=SHA256_PATTERN, description="SHA-256 of the 65-octet point"
    )
    dac_serial: str = Field(description="Hex")
    dac_b64: str = Field(description="The DAC, DER, base64")
    dac_sha256: str = Field(pattern=SHA256_PATTERN)
    issued_at: datetime
    request_id: str = Field(description="The request that made it")


class KeyClaim(Message):
    """A public key certified for a product: which device holds it (write-once)."""

    type: Literal["device-key-claim/v1"] = "device-key-claim/v1"
    vendor_id: int
    product_id: int
    public_key_sha256: str = Field(pattern=SHA256_PATTERN)
    order_id: OrderId
    device_id: str
    index: DeviceIndex
