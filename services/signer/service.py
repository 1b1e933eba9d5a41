"""The signer: exactly one DAC per device, issued by the order's attestation profile.

decode → find the device's issued DAC (write-once `dac-issued.json`) or issue one → verify
against the PAI → emit `mfg.devices.attested` (private key wrapped) and a ledger entry.
Two signers racing for one device both try the conditional write; the loser adopts the
winner's DAC, so a device never has two.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from matterfab import catalogue, profiles
from matterfab.errors import IntegrityError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.matter import attestation
from matterfab.messages import (
    DAC_LEDGER,
    DEVICES_ATTESTED,
    DeviceAllocated,
    DeviceAttested,
    LedgerEntry,
)
from matterfab.messages.base import device_key
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    """A profile with its open key source and the facts every DAC message repeats."""

    profile: profiles.AttestationProfile
    signer: attestation.PaiSigner
    pai_b64: str = ""
    pai_skid_hex: str = ""

    def __post_init__(self) -> None:
        pai = self.profile.pai_cert
        self.pai_b64 = base64.b64encode(pai.public_bytes(Encoding.DER)).decode()
        skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.pai_skid_hex = skid.digest.hex()


class Signer:
    """Issues and remembers DACs; holds the profiles (and so the PAI keys) of this signer."""

    def __init__(self, store: ObjectStore, wrapper: KeyWrapper, profiles_dir: Any = None):
        self.store = store
        self.wrapper = wrapper
        self.profiles_dir = profiles_dir
        self._profiles: dict[str, _Loaded] = {}

    async def publish_profiles(self) -> None:
        """Put every local profile's public part in the catalogue for the allocator."""
        for name in profiles.list_profiles(self.profiles_dir):
            await catalogue.publish(
                self.store, profiles.load_profile(name, self.profiles_dir).public_summary()
            )

    async def _profile(self, name: str) -> _Loaded:
        cached = self._profiles.get(name)
        if cached is None:
            # Loaded on first use, so a profile made while the signer runs works at once.
            profile = profiles.load_profile(name, self.profiles_dir)
            cached = _Loaded(profile, profile.signer())
            self._profiles[name] = cached
            await catalogue.publish(self.store, profile.public_summary())
        return cached

    async def handle(self, msg: DeviceAllocated) -> list[Emit]:
        """Attest one device."""
        loaded = await self._profile(msg.attestation_profile)
        profile = loaded.profile
        state_key = device_key(msg.order_id, msg.index, "dac-issued.json")
        raw = await self.store.get_or_none(state_key)
        if raw is None:
            issued = await asyncio.to_thread(self._issue, msg, profile, loaded.signer)
            try:
                await self.store.put_once(
                    state_key, json.dumps(issued).encode(), "application/json"
                )
            except IntegrityError:
                raw = await self.store.get(state_key)  # another signer was first: adopt its DAC
            else:
                raw = None
        state = json.loads(raw) if raw is not None else issued
        cert_der = base64.b64decode(state["cert_b64"])
        await self.store.put_once(
            device_key(msg.order_id, msg.index, "dac.der"), cert_der, "application/pkix-cert"
        )
        cert = x509.load_der_x509_certificate(cert_der)
        attested = DeviceAttested(
            **msg.model_dump(exclude={"type"}),
            dac_serial=state["serial_hex"],
            dac_cert_b64=state["cert_b64"],
            dac_key_wrapped=state["key_wrapped"],
            pai_cert_b64=loaded.pai_b64,
            cd_b64=base64.b64encode(profile.cd_der).decode(),
        )
        entry = LedgerEntry(
            dac_serial=state["serial_hex"],
            order_id=msg.order_id,
            device_id=msg.device_id,
            index=msg.index,
            attestation_profile=profile.name,
            vendor_id=msg.product.vendor_id,
            product_id=msg.product.product_id,
            subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            pai_skid=loaded.pai_skid_hex,
            dac_sha256=hashlib.sha256(cert_der).hexdigest(),
            issued_at=datetime.fromisoformat(state["issued_at"]),
        )
        return [
            Emit(DEVICES_ATTESTED, msg.device_id, attested),
            Emit(DAC_LEDGER, state["serial_hex"], entry),
        ]

    def _issue(
        self, msg: DeviceAllocated, profile: profiles.AttestationProfile, signer: Any
    ) -> dict[str, Any]:
        p = msg.product
        if profile.vendor_id != p.vendor_id:
            raise invalid(
                "product.vendor_id", f"must match the profile's vendor 0x{profile.vendor_id:04X}"
            )
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = (
            now + timedelta(days=profile.dac_validity_days) if profile.dac_validity_days else None
        )
        dac = attestation.issue_dac(
            pai_cert=profile.pai_cert,
            signer=signer,
            vendor_id=p.vendor_id,
            product_id=p.product_id,
            not_before=now - timedelta(minutes=5),
            not_after=not_after,
        )
        return {
            "serial_hex": dac.serial_hex,
            "cert_b64": base64.b64encode(dac.der).decode(),
            "key_wrapped": self.wrapper.wrap(dac.private_key_raw, f"dac-key:{msg.device_id}"),
            "issued_at": now.isoformat(),
        }
