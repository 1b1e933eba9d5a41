"""The signer: exactly one DAC per device, issued by the order's attestation profile.

decode → issue a DAC (verified against the PAI) → store it write-once as the device's
`dac.der`, its private key wrapped in the object's metadata → emit `mfg.devices.attested`
(private key wrapped) and a ledger entry. The conditional write of `dac.der` is what makes a
DAC *the* device's DAC: a redelivered device, or two signers racing for one, find the key
taken and adopt the stored certificate and key, so a device never has two. (The fresh DAC
of the loser is discarded before anything announces it.) One PUT per device, no lookup first.

A `dac_storage: on-module` device already holds its DAC: nothing is issued, stored or entered
in the ledger; the device passes to the builder with the profile's CD only (the profile may be
CD-only). `secure-cert` devices get their DAC exactly as `factory-nvs` ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
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

# User metadata of `dac.der` (x-amz-meta-…): what a redelivery needs to re-announce the DAC.
META_KEY = "dac-key-wrapped"  # the private key, AES-256-GCM wrapped, bound to the device id
META_ISSUED = "issued-at"


@dataclass
class _Loaded:
    """A profile with its open key source and the facts every DAC message repeats."""

    profile: profiles.AttestationProfile
    signer: attestation.PaiSigner
    pai_b64: str = ""
    pai_skid_hex: str = ""

    def __post_init__(self) -> None:
        pai = self.profile.require_pai()  # a CD-only profile has no PAI
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
        self._cd_only: dict[str, profiles.AttestationProfile] = {}  # for on-module devices

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

    async def _cd_profile(self, name: str) -> profiles.AttestationProfile:
        """The profile without opening its key source: what an on-module device needs (the CD)."""
        loaded = self._profiles.get(name)
        if loaded is not None:
            return loaded.profile
        cached = self._cd_only.get(name)
        if cached is None:
            cached = profiles.load_profile(name, self.profiles_dir)
            self._cd_only[name] = cached
            await catalogue.publish(self.store, cached.public_summary())
        return cached

    async def pass_on_module(self, msg: DeviceAllocated) -> list[Emit]:
        """An on-module device: no DAC, no ledger entry; the builder gets the profile's CD."""
        profile = await self._cd_profile(msg.attestation_profile)
        _check_vendor(profile, msg)
        attested = DeviceAttested(
            **msg.model_dump(exclude={"type"}), cd_b64=base64.b64encode(profile.cd_der).decode()
        )
        return [Emit(DEVICES_ATTESTED, msg.device_id, attested)]

    async def handle(self, msg: DeviceAllocated) -> list[Emit]:
        """Attest one device (issue its DAC, or pass an on-module device through)."""
        if msg.dac_storage == "on-module":
            return await self.pass_on_module(msg)
        loaded = await self._profile(msg.attestation_profile)
        profile = loaded.profile
        if isinstance(loaded.signer, attestation.InMemorySigner):
            # An in-process key: ~0.5 ms of CPU, which a thread hand-off would only add to.
            cert_der, issued = self._issue(msg, profile, loaded.signer)
        else:  # an HSM call may wait on the device: keep the loop free meanwhile
            cert_der, issued = await asyncio.to_thread(self._issue, msg, profile, loaded.signer)
        key = device_key(msg.order_id, msg.index, "dac.der")
        if not await self.store.put_if_absent(key, cert_der, "application/pkix-cert", issued):
            found = await self.store.get_with_metadata(key)  # issued before: adopt that one
            if found is None or not found[1].get(META_KEY):
                raise IntegrityError(f"{key} exists without its wrapped key: not adoptable")
            cert_der, issued = found
        cert = x509.load_der_x509_certificate(cert_der)
        dac_serial = attestation.serial_hex(cert.serial_number)
        attested = DeviceAttested(
            **msg.model_dump(exclude={"type"}),
            dac_serial=dac_serial,
            dac_cert_b64=base64.b64encode(cert_der).decode(),
            dac_key_wrapped=issued[META_KEY],
            pai_cert_b64=loaded.pai_b64,
            cd_b64=base64.b64encode(profile.cd_der).decode(),
        )
        entry = LedgerEntry(
            dac_serial=dac_serial,
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
            issued_at=datetime.fromisoformat(issued[META_ISSUED]),
        )
        return [
            Emit(DEVICES_ATTESTED, msg.device_id, attested),
            Emit(DAC_LEDGER, dac_serial, entry),
        ]

    def _issue(
        self, msg: DeviceAllocated, profile: profiles.AttestationProfile, signer: Any
    ) -> tuple[bytes, dict[str, str]]:
        """A fresh DAC: its DER, and `dac.der`'s metadata (wrapped key, time of issue)."""
        p = msg.product
        _check_vendor(profile, msg)
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = (
            now + timedelta(days=profile.dac_validity_days) if profile.dac_validity_days else None
        )
        dac = attestation.issue_dac(
            pai_cert=profile.require_pai(),
            signer=signer,
            vendor_id=p.vendor_id,
            product_id=p.product_id,
            not_before=now - timedelta(minutes=5),
            not_after=not_after,
        )
        return dac.der, {
            META_KEY: self.wrapper.wrap(dac.private_key_raw, f"dac-key:{msg.device_id}"),
            META_ISSUED: now.isoformat(),
        }


def _check_vendor(profile: profiles.AttestationProfile, msg: DeviceAllocated) -> None:
    if profile.vendor_id != msg.product.vendor_id:
        raise invalid(
            "product.vendor_id", f"must match the profile's vendor 0x{profile.vendor_id:04X}"
        )
