"""Rework: a device gets a new DAC (and new images) for the same identities.

`reissue` runs where the profile's PAI key is (like `pki crl`), and is built from the same
pure pieces as the pipeline: the allocator's stored identity (`allocation/<chunk>.json`), the
signer's `issue_dac` (verified against the PAI) and the builder's `device_inputs` and
`build_devices`. Serial number, discriminator and passcode stay the same (`new_passcode`
draws a fresh passcode and salt: a new QR code, also indexed). Nothing the pipeline wrote is
replaced: generation n's objects go under
`orders/<id>/devices/<index>/gen-<n>/` and its record is `image-<n>-<serial>.json`.

Steps, in an order that a crash at any point leaves safe:
1. issue the new DAC in memory;
2. claim generation n (`reissue-<n>.json`, write-once, naming the new DAC serial): two
   operators reissuing one device at once cannot both win;
3. store generation n's objects, then its image record and pointers (now `device find`
   shows the new DAC);
4. revoke the old DAC, and every DAC of an abandoned claim, as `superseded`.
A crash between 2 and 3 leaves a claim without an image: the next reissue takes n+1 and
revokes the abandoned DAC, which was never stored anywhere a device could get it.

Device-born keys (`dac_storage: device-key`): the device makes a new key, so nothing is
issued here. `reissue` writes a CertifyGrant (`certify-<n>.json`) and revokes the old DAC;
the device-key signer must call `certify_generation` when a CSR arrives for a device that
already has a DAC: a grant of generation n with no image of generation n lets exactly one
more DAC be certified, stored under generation n's keys and recorded with `record_image`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import BaseModel, ConfigDict, Field

from matterfab import profiles
from matterfab.bucket import objects
from matterfab.errors import IntegrityError, invalid
from matterfab.fleet import keys
from matterfab.fleet.index import device_view, record_image, split_device_id
from matterfab.fleet.records import CertifyGrant, DeviceImage
from matterfab.fleet.revocations import Outcome, Target, revoke
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LineCatalogue, LineKey
from matterfab.matter import attestation, device, identity
from matterfab.messages import DeviceAttested, ObjectRef
from matterfab.messages.base import utcnow
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.messages.work_order import WorkOrder
from matterfab.objectstore import Store
from matterfab.sealing import SEALED_SUFFIX
from matterfab.services.allocator import allocation
from matterfab.services.builder.service import (
    SEAL_PURPOSE,
    device_inputs,
    flash_files,
    seal_files,
)

SUPERSEDED = "superseded"
OCTETS = "application/octet-stream"


class ReissueClaim(BaseModel):
    """Generation n of a device is being made, with this DAC (write-once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    generation: int = Field(ge=1)
    dac_serial: str = Field(description="The new DAC's serial ('' for a device-key grant)")
    replaces: str = Field(description="The DAC serial it supersedes")
    by: str
    at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Reissued:
    """What `reissue` did."""

    image: DeviceImage | None  # None for a device-key grant
    grant: CertifyGrant | None
    revoked: list[Outcome]
    files: dict[str, bytes]  # the new image's files by name (what a rework bench flashes)


async def _generations(store: Store, order_id: str, index: int) -> tuple[int, list[str]]:
    """The highest generation taken (image, claim or grant) and the serials of abandoned claims."""
    listed = await store.list_keys(keys.device_prefix(order_id, index))
    imaged = {int(m.group(1)) for k in listed if (m := keys.IMAGE_RE.search(k))}
    claimed = {int(m.group(1)): k for k in listed if (m := keys.REISSUE_RE.search(k))}
    granted = {int(m.group(1)) for k in listed if (m := keys.CERTIFY_RE.search(k))}
    abandoned = []
    for gen, key in claimed.items():
        if gen not in imaged:
            claim = ReissueClaim.model_validate_json(await store.get(key))
            if claim.dac_serial:
                abandoned.append(claim.dac_serial)
    return max(imaged | set(claimed) | granted | {0}), abandoned


async def certify_generation(store: Store, order_id: str, index: int) -> int | None:
    """The generation a device-key device may be certified as now, or None.

    For the device-key signer: a device that already has a DAC gets another only when a
    CertifyGrant of a generation with no image yet exists (written by `device reissue`).
    """
    listed = await store.list_keys(keys.device_prefix(order_id, index))
    imaged = {int(m.group(1)) for k in listed if (m := keys.IMAGE_RE.search(k))}
    granted = [int(m.group(1)) for k in listed if (m := keys.CERTIFY_RE.search(k))]
    open_grants = [g for g in granted if g not in imaged]
    return max(open_grants) if open_grants else None


async def reissue(
    store: Store,
    device_id: str,
    by: str,
    profiles_dir: Path | None = None,
    kek: bytes | None = None,
    new_passcode: bool = False,
) -> Reissued:
    """Reissue one device's DAC (see the module docstring); NotFound / InvalidInput as find."""
    view = await device_view(store, device_id)
    order_id, index = split_device_id(device_id)
    if view.scrap is not None:
        raise invalid("device", f"{device_id} is scrapped: a scrapped device is never reissued")
    if view.image is None:
        raise invalid("device", f"{device_id} has no image yet (state {view.state})")
    old = view.image
    storage = view.dac_storage or "factory-nvs"
    if storage == "on-module":
        raise invalid("device", f"{device_id} is on-module: its module holds the DAC")
    profile_name = str(view.attestation_profile)
    old_target = Target(profile_name, device_id, old.generation, old.dac_serial)
    top, abandoned = await _generations(store, order_id, index)
    generation = top + 1
    if storage == "device-key":
        grant = CertifyGrant(
            device_id=device_id, generation=generation, revoked_dac_serial=old.dac_serial, by=by
        )
        if not await store.put_if_absent(
            keys.certify_key(order_id, index, generation), grant.to_bytes(), "application/json"
        ):
            raise IntegrityError(f"{device_id} was reissued meanwhile: run it again")
        revoked = [await revoke(store, old_target, SUPERSEDED, by)] if old.dac_serial else []
        return Reissued(None, grant, revoked, {})

    order = await objects.get_order(store, order_id)
    chunk = index // allocation.CHUNK
    allocated_chunk = await objects.read_allocation(store, order_id, chunk)
    devices = [] if allocated_chunk is None else allocated_chunk.to_docs()
    mine = [d for d in devices if d["index"] == index]
    if len(mine) != 1:
        raise IntegrityError(f"{device_id}: not in its allocation chunk {chunk}")
    (allocated,) = allocation.lot_message(order, mine).identities()
    if new_passcode:  # asked for: a fresh passcode and salt (so a new QR code and verifier)
        salt = identity.generate_salt(allocation.SALT_LEN)
        allocated = allocated.model_copy(
            update={
                "passcode": identity.generate_passcode(),
                "salt_b64": base64.b64encode(salt).decode(),
            }
        )

    profile = profiles.load_profile(profile_name, profiles_dir)
    pai = profile.require_pai()
    signer = profile.signer()
    now = datetime.now(UTC).replace(microsecond=0)
    days = profile.dac_validity_days
    dac = attestation.issue_dac(
        pai_cert=pai,
        signer=signer,
        vendor_id=order.product.vendor_id,
        product_id=order.product.product_id,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=days) if days else None,
    )
    claim = ReissueClaim(
        device_id=device_id,
        generation=generation,
        dac_serial=dac.serial_hex,
        replaces=old.dac_serial,
        by=by,
    )
    if not await store.put_if_absent(
        keys.reissue_key(order_id, index, generation), claim.model_dump_json().encode()
    ):
        raise IntegrityError(f"{device_id} was reissued meanwhile: run it again")

    attested = DeviceAttested(
        **allocated.model_dump(exclude={"type"}),
        dac_serial=dac.serial_hex,
        dac_cert_b64=base64.b64encode(dac.der).decode(),
        pai_cert_b64=base64.b64encode(pai.public_bytes(Encoding.DER)).decode(),
        cd_b64=base64.b64encode(profile.cd_der).decode(),
    )
    xts_key = None
    if attested.encryption == "xts":
        if kek is None or not attested.nvs_keys_wrapped:
            raise invalid("kek", "an xts order's reissue needs the key-encryption key")
        xts_key = KeyWrapper(kek).unwrap(attested.nvs_keys_wrapped, f"nvs-keys:{device_id}")
    (art,) = device.build_devices([device_inputs(attested, dac.private_key_raw, xts_key)])
    # The device's secrets are sealed to its order's line, as the builder seals them.
    secrets = flash_files(art)
    line_key = await _line_key(store, order)
    object_keys = {
        n: keys.generation_key(order_id, index, generation, OBJECT_FILES[n]) for n in secrets
    }
    seal_secret = KeyWrapper(kek).derive(SEAL_PURPOSE) if kek is not None else os.urandom(32)
    sealed = seal_files(
        secrets, object_keys, line_key, line_key.public_key(), seal_secret, device_id
    )
    refs: dict[str, ObjectRef] = {}
    files: dict[str, bytes] = {}  # what --out writes: the secrets as sealed, the rest plain
    for name, (blob, ref) in sealed.items():
        await store.put_once(ref.key, blob, OCTETS)
        refs[name] = ref
        files[OBJECT_FILES[name] + SEALED_SUFFIX] = blob
    for name, data in (("dac", dac.der), ("qrcode", art.qrcode_png)):
        key = keys.generation_key(order_id, index, generation, OBJECT_FILES[name])
        stored = await store.put_once(key, data, OCTETS)
        refs[name] = ObjectRef(key=stored.key, sha256=stored.sha256, size=stored.size)
        files[OBJECT_FILES[name]] = data
    image = DeviceImage(
        device_id=device_id,
        order_id=order_id,
        index=index,
        generation=generation,
        serial_num=allocated.serial_num,
        vendor_id=order.product.vendor_id,
        product_id=order.product.product_id,
        discriminator=allocated.discriminator,
        qr_payload=art.qr_payload,
        manual_code=art.manual_code,
        dac_serial=dac.serial_hex,
        objects=refs,
        source="reissue",
    )
    await record_image(store, image)
    revoked = []
    for serial in [old.dac_serial, *abandoned]:
        if serial:
            target = Target(profile_name, device_id, old.generation, serial)
            revoked.append(await revoke(store, target, SUPERSEDED, by))
    return Reissued(image, None, revoked, files)


async def _line_key(store: Store, order: WorkOrder) -> LineKey:
    """The key the order was sealed to (fixed in its claim.json), else its line's current one."""
    lines = LineCatalogue(store)
    claim = await objects.read_claim(store, order.order_id)
    pinned = claim.line_key if claim is not None else None
    found = await (
        lines.by_fingerprint(order.line, pinned) if pinned else lines.current(order.line)
    )
    if found is None:
        raise invalid("line", f"line {order.line} has no key to seal the reissued image to")
    return found
