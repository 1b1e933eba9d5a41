"""The signer: exactly one DAC per device, issued by the order's attestation profile, by lots.

decode a lot → issue every device's DAC (each verified against the PAI) → store them together,
write-once, as the lot's `dacs.lot` (matterfab/lots.py: one `dac.der` piece per device, its
private key wrapped and bound to the device id, and its time of issue, in the piece's index
entry) → emit one `LotAttested` (each device's `dac` is its piece of `dacs.lot`, where the
builder reads the certificate and the wrapped key) and one `LedgerLot`. One PUT per lot, no
lookup first.

The conditional write of `dacs.lot` is what makes those DACs *the* devices' DACs. A lot is
always the same devices (the allocator cuts an order into lots once, `claim.json`), so a
redelivered lot, a lot re-sent by the allocator's re-drive, or two signers racing for one lot
find the key taken and adopt every DAC and wrapped key stored in it: a device never has two.
(The fresh DACs of the loser are discarded before anything announces them.) A `dacs.lot` that
is not exactly this lot's devices, or lacks a wrapped key, or whose pieces do not match its
index, is never adopted nor replaced: IntegrityError, the runtime's integrity alarm.

A `dac_storage: on-module` lot already holds its DACs: nothing is issued, stored or entered
in the ledger; the lot passes to the builder with the profile's CD only (the profile may be
CD-only). A `device-key` lot passes the same way: its devices make their own keys, and each
gets its DAC on the line, over its own key (`dac_requests.py`). `secure-cert` devices get their
DAC exactly as `factory-nvs` ones.
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from matterfab import catalogue, dac_pool, lots, profiles
from matterfab.errors import AttestationError, IntegrityError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.matter import attestation, nvs
from matterfab.messages import DAC_LEDGER, DEVICES_ATTESTED, LedgerDac, LedgerLot, ObjectRef
from matterfab.messages.base import device_id
from matterfab.messages.devices import AllocatedDevice, Attestation, AttestedDevice
from matterfab.messages.lots import LotAllocated, LotAttested, LotOrder
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore

log = logging.getLogger(__name__)

LOT_TYPE = "application/octet-stream"


@dataclass
class _Loaded:
    """A profile with its open key source and the facts every lot message repeats."""

    profile: profiles.AttestationProfile
    signer: attestation.PaiSigner
    pai_b64: str = ""
    pai_skid_hex: str = ""

    def __post_init__(self) -> None:
        pai = self.profile.require_pai()  # a CD-only profile has no PAI
        self.pai_b64 = base64.b64encode(pai.public_bytes(Encoding.DER)).decode()
        skid = pai.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.pai_skid_hex = skid.digest.hex()


@dataclass(frozen=True)
class _Dac:
    """One device's DAC as stored in dacs.lot: certificate, wrapped key, time of issue."""

    index: int
    der: bytes
    cert: x509.Certificate
    key_wrapped: str
    issued_at: str  # ISO 8601, UTC

    def piece(self) -> lots.Piece:
        """Its piece of dacs.lot."""
        meta = {lots.DAC_KEY_META: self.key_wrapped, lots.DAC_ISSUED_META: self.issued_at}
        return lots.Piece(self.index, lots.DAC_PIECE, self.der, meta)


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

    async def loaded_profile(self, name: str) -> _Loaded:
        """Profile `name` with its key source open (loaded once, on first use)."""
        return await self._profile(name)

    async def _cd_profile(self, name: str) -> profiles.AttestationProfile:
        """The profile without opening its key source: what an on-module lot needs (the CD)."""
        loaded = self._profiles.get(name)
        if loaded is not None:
            return loaded.profile
        cached = self._cd_only.get(name)
        if cached is None:
            cached = profiles.load_profile(name, self.profiles_dir)
            self._cd_only[name] = cached
            await catalogue.publish(self.store, cached.public_summary())
        return cached

    async def pass_on_module(self, lot: LotAllocated) -> list[Emit]:
        """An on-module lot: no DAC, no object, no ledger; the builder gets the profile's CD."""
        profile = await self._cd_profile(lot.attestation_profile)
        _check_vendor(profile, lot)
        attested = LotAttested.of(
            lot,
            Attestation(cd_b64=base64.b64encode(profile.cd_der).decode()),
            [AttestedDevice(**AllocatedDevice.fields_in(d)) for d in lot.devices],
        )
        return [Emit(DEVICES_ATTESTED, lot.lot_id, attested)]

    async def handle(self, lot: LotAllocated) -> list[Emit]:
        """Attest one lot (issue its DACs, or pass an on-module lot through)."""
        if lot.dac_storage in nvs.NO_DAC_AT_BUILD:  # on-module, device-key: none issued now
            return await self.pass_on_module(lot)
        loaded = await self._profile(lot.attestation_profile)
        _check_vendor(loaded.profile, lot)
        if lot.dac_source == "imported":
            dacs = await self._imported(lot, loaded)
        elif isinstance(loaded.signer, attestation.InMemorySigner):
            # An in-process key: ~0.5 ms of CPU a DAC, which a thread hand-off would only add to.
            dacs = self._issue(lot, loaded)
        else:  # an HSM call may wait on the device: keep the loop free meanwhile, once a lot
            dacs = await asyncio.to_thread(self._issue, lot, loaded)
        key = lots.lot_key(lot.order_id, lot.devices[0].index, lots.DACS)
        body, entries = lots.pack(d.piece() for d in dacs)
        if not await self.store.put_if_absent(key, body, LOT_TYPE):
            # Issued before (a redelivery, a re-drive, a racing signer): adopt those DACs.
            found = await self.store.get_or_none(key)
            if found is None:
                raise IntegrityError(f"{key} was refused as taken, yet cannot be read")
            body = found
            dacs, entries = self._adopt(key, found, lot, loaded)
        return self._announce(lot, loaded, key, body, dacs, entries)

    def _issue(self, lot: LotAllocated, loaded: _Loaded) -> list[_Dac]:
        """Fresh DACs for every device of the lot, each verified against the PAI."""
        profile = loaded.profile
        p = lot.product
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = (
            now + timedelta(days=profile.dac_validity_days) if profile.dac_validity_days else None
        )
        pai = profile.require_pai()
        out = []
        for d in lot.devices:
            dac = attestation.issue_dac(  # verified against the PAI before it is returned
                pai_cert=pai,
                signer=loaded.signer,
                vendor_id=p.vendor_id,
                product_id=p.product_id,
                not_before=now - timedelta(minutes=5),
                not_after=not_after,
            )
            wrapped = self.wrapper.wrap(
                dac.private_key_raw, f"dac-key:{device_id(lot.order_id, d.index)}"
            )
            out.append(_Dac(d.index, dac.der, dac.certificate, wrapped, now.isoformat()))
        return out

    async def _imported(self, lot: LotAllocated, loaded: _Loaded) -> list[_Dac]:
        """One unused imported DAC per device (claimed write-once: dac_pool.take), checked
        against the PAI again, its key re-wrapped for the device it now belongs to."""
        profile = loaded.profile
        pai = profile.require_pai()
        p = lot.product
        chosen = await dac_pool.take(
            self.store, profile.name, lot.order_id, [d.index for d in lot.devices]
        )
        now = datetime.now(UTC).replace(microsecond=0).isoformat()
        out = []
        for d in lot.devices:
            dac = await dac_pool.load(self.store, profile.name, chosen[d.index])
            cert = x509.load_der_x509_certificate(dac.der)
            attestation.verify_dac(cert, pai, vendor_id=p.vendor_id, product_id=p.product_id)
            raw = self.wrapper.unwrap(
                dac.key_wrapped, dac_pool.key_context(profile.name, dac.fingerprint)
            )
            wrapped = self.wrapper.wrap(raw, f"dac-key:{device_id(lot.order_id, d.index)}")
            out.append(_Dac(d.index, dac.der, cert, wrapped, now))
        return out

    def _adopt(
        self, key: str, body: bytes, lot: LotAllocated, loaded: _Loaded
    ) -> tuple[list[_Dac], list[lots.Entry]]:
        """The DACs a stored dacs.lot holds for this lot (and where); IntegrityError if it is
        not exactly this lot's DACs, each verified against the PAI with its own wrapped key."""
        stored = lots.unpack(body, key)
        by_index = stored.named(lots.DAC_PIECE)
        wanted = [d.index for d in lot.devices]
        if len(stored.entries) != len(wanted) or sorted(by_index) != sorted(wanted):
            held = sorted(e.index for e in stored.entries)
            raise IntegrityError(
                f"{key} holds the DACs of devices {held}, not of this lot {wanted}: not adoptable"
            )
        p = lot.product
        pai = loaded.profile.require_pai()
        out = []
        for index in wanted:
            e = by_index[index]
            wrapped, issued = e.meta.get(lots.DAC_KEY_META), e.meta.get(lots.DAC_ISSUED_META)
            if not wrapped or not issued:
                raise IntegrityError(f"{key}: the DAC of device {index} is without its wrapped key")
            der = stored.cut(e)  # digest-checked
            try:
                cert = x509.load_der_x509_certificate(der)
                attestation.verify_dac(cert, pai, vendor_id=p.vendor_id, product_id=p.product_id)
                # The wrapped key is this device's (bound to its id) and the DAC's own.
                raw = self.wrapper.unwrap(wrapped, f"dac-key:{device_id(lot.order_id, index)}")
                public = ec.derive_private_key(int.from_bytes(raw), ec.SECP256R1()).public_key()
                if public != cert.public_key():
                    raise AttestationError("its wrapped key is not the DAC's")
                datetime.fromisoformat(issued)
            except (ValueError, AttestationError, IntegrityError) as exc:
                raise IntegrityError(
                    f"{key}: the DAC of device {index} is not adoptable: {exc}"
                ) from None
            out.append(_Dac(index, der, cert, wrapped, issued))
        return out, [by_index[i] for i in wanted]

    def _announce(
        self,
        lot: LotAllocated,
        loaded: _Loaded,
        key: str,
        body: bytes,
        dacs: list[_Dac],
        entries: list[lots.Entry],
    ) -> list[Emit]:
        """The lot's `LotAttested` and `LedgerLot` for the DACs stored at `key` (`body`)."""
        devices, ledger = [], []
        for d, dac, e in zip(lot.devices, dacs, entries, strict=True):
            serial = attestation.serial_hex(dac.cert.serial_number)
            devices.append(
                # The certificate and its wrapped key stay in dacs.lot, which the builder reads
                # once a lot: on the topic they were ~60 % of a LotAttested after compression,
                # bytes the embedded broker rewrites to its snapshot every second (issue #26).
                AttestedDevice(
                    **AllocatedDevice.fields_in(d),
                    dac_serial=serial,
                    dac=ObjectRef(key=key, sha256=e.sha256, size=e.size, offset=e.offset),
                )
            )
            ledger.append(
                LedgerDac(
                    dac_serial=serial,
                    device_id=device_id(lot.order_id, d.index),
                    index=d.index,
                    subject=dac.cert.subject.rfc4514_string(),
                    not_before=dac.cert.not_valid_before_utc,
                    not_after=dac.cert.not_valid_after_utc,
                    dac_sha256=e.sha256,
                    issued_at=datetime.fromisoformat(dac.issued_at),
                )
            )
        attested = LotAttested.of(
            lot,
            Attestation(
                pai_cert_b64=loaded.pai_b64,
                cd_b64=base64.b64encode(loaded.profile.cd_der).decode(),
            ),
            devices,
        )
        entry = LedgerLot(
            order_id=lot.order_id,
            lot_id=lot.lot_id,
            attestation_profile=loaded.profile.name,
            vendor_id=lot.product.vendor_id,
            product_id=lot.product.product_id,
            pai_skid=loaded.pai_skid_hex,
            dacs_lot=ObjectRef(key=key, sha256=hashlib.sha256(body).hexdigest(), size=len(body)),
            dacs=ledger,
        )
        return [
            Emit(DEVICES_ATTESTED, lot.lot_id, attested),
            Emit(DAC_LEDGER, lot.lot_id, entry),
        ]


def _check_vendor(profile: profiles.AttestationProfile, lot: LotOrder) -> None:
    if profile.vendor_id != lot.product.vendor_id:
        raise invalid(
            "product.vendor_id", f"must match the profile's vendor 0x{profile.vendor_id:04X}"
        )
