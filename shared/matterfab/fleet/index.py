"""The device index: where each device's records are, and the view `device find` prints.

Nothing on the build path (allocator → assembler) writes to the fleet. A device's
generation-0 image record is its `onboarding.json` piece in its lot's `labels.lot`, which the
builder writes anyway (one PUT per lot): `pipeline_image` / `LotImages` read it back (one LIST
of the order's lots, one GET per lot).

Pointers (by serial, DAC serial and onboarding payload) are written when a device leaves the
build path: the assembler's station side writes them when a station's final `flashed` result
arrives (beside its MAC claim `macs/<mac>.json`, the MAC pointer), `device reindex <order>`
writes them on demand for built devices not flashed yet, and reissue (`record_image`) and the
signer's device-key DACs (`record_bound_dac`) write their generation's image record and
pointers. `dac revoke`, `device scrap` and `device reissue` write their records. All are
write-once (conditional PUTs): a repeat is a no-op.

Reader: `find` resolves one identity to a device with one GET (two for a MAC), then
`device_view` reads that device's few records (a LIST of its prefix, its order, its station
outcome, its lot's labels.lot, and one existence check per DAC it ever had): a handful of
requests whatever the size of the fleet. An identity with no pointer yet is a device that is
not flashed (or not indexed): NotFound says so and names `matterfab device reindex`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from matterfab import lots
from matterfab.bucket import objects
from matterfab.errors import IntegrityError, invalid
from matterfab.fleet import keys
from matterfab.fleet.records import DeviceImage, Pointer, Revocation, Scrap
from matterfab.matter import payload
from matterfab.messages import ImageReady, StationResult
from matterfab.messages.base import ORDER_ID_RE, index_str, utcnow
from matterfab.messages.codec import decode
from matterfab.messages.onboarding import OBJECT_FILES, OnboardingRecord
from matterfab.messages.station import station_record_key
from matterfab.objectstore import Store

log = logging.getLogger(__name__)

KINDS = ("serial", "mac", "dac_serial", "device_id", "qr")


IMAGE_REFS = ("partition", "secure_cert", "nvs_keys", "dac")  # a DeviceImage's `objects`
NOT_INDEXED = (  # after "no device with <kind> <value>"
    " is indexed yet: devices are indexed when a station records them flashed; "
    "for built devices not flashed yet run `matterfab device reindex <order>`"
)


def image_of(msg: OnboardingRecord) -> DeviceImage:
    """The generation-0 image record of an onboarding record (an ImageReady is one).

    `at` is the ImageReady's time; None for a record read from a labels.lot (it has none).
    """
    refs = {
        name: ref
        for name, ref in msg.objects.model_dump(exclude_none=True).items()
        if name in IMAGE_REFS
    }
    order_id, _ = split_device_id(msg.device_id)
    return DeviceImage(
        device_id=msg.device_id,
        order_id=order_id,
        index=msg.index,
        generation=0,
        serial_num=msg.serial_num,
        vendor_id=msg.vendor_id,
        product_id=msg.product_id,
        discriminator=msg.discriminator,
        qr_payload=msg.qr_payload,
        manual_code=msg.manual_code,
        dac_serial=msg.dac_serial,
        objects=refs,
        at=msg.at if isinstance(msg, ImageReady) else None,
    )


def pointers_of(image: DeviceImage) -> dict[str, Pointer]:
    """Every pointer to a device's image: by serial, by payload, and by DAC serial."""
    out = {
        keys.serial_key(image.vendor_id, image.product_id, image.serial_num): Pointer(
            device_id=image.device_id
        ),
    }
    if image.qr_payload:  # none with a dynamic passcode (the device shows its own)
        passcode = payload.decode_qr(image.qr_payload).passcode
        out[keys.qr_key(image.vendor_id, image.product_id, image.discriminator, passcode)] = (
            Pointer(device_id=image.device_id)
        )
    if image.dac_serial:
        out[keys.dac_key(image.dac_serial)] = Pointer(
            device_id=image.device_id, generation=image.generation
        )
    return out


async def record_pointers(store: Store, image: DeviceImage) -> None:
    """Write the pointers of a device's image (write-once; a repeat is a no-op).

    A pointer already held by another device is an integrity alarm (logged), never replaced.
    """

    async def point(pkey: str, pointer: Pointer) -> None:
        if await store.put_if_absent(pkey, pointer.to_bytes(), "application/json"):
            return
        held = Pointer.model_validate_json(await store.get(pkey))
        if held.device_id != pointer.device_id:
            log.error(
                "INDEX CONFLICT ALARM: %s already leads to %s",
                pkey,
                held.device_id,
                extra={"device_id": image.device_id},
            )

    await asyncio.gather(*(point(k, p) for k, p in pointers_of(image).items()))


async def record_image(store: Store, image: DeviceImage) -> None:
    """Write a device image's record and pointers (write-once; a repeat is a no-op).

    For images the pipeline did not build: reissued generations, device-key DACs, orders
    built before labels.lot (`reindex` from their manifest). The image record is written
    first: a pointer never leads to a device without one.
    """
    key = keys.image_key(image.order_id, image.index, image.generation, image.dac_serial)
    # Taken already: a redelivery (same device), whose pointers may still be missing.
    await store.put_if_absent(key, image.to_bytes(), "application/json")
    await record_pointers(store, image)


def lot_images_of(body: bytes, what: str) -> list[DeviceImage]:
    """The generation-0 images in a labels.lot's bytes (its onboarding.json pieces)."""
    lot = lots.unpack(body, what)
    out = []
    for entry in lot.entries:
        if entry.name == OBJECT_FILES["onboarding"]:
            rec = OnboardingRecord.model_validate_json(lot.cut(entry))
            if rec.index != entry.index:
                raise IntegrityError(f"{what}: onboarding.json of device {entry.index} is not")
            out.append(image_of(rec))
    return out


class LotImages:
    """An order's generation-0 images, read from its labels.lot objects as they are needed.

    One LIST of the order's lots (at the first look-up), then one GET per lot looked into;
    the lots read are kept (parsed, without their PNGs) while this object lives.
    """

    def __init__(self, store: Store, order_id: str, max_lots: int | None = None):
        self.store = store
        self.order_id = order_id
        self.max_lots = max_lots  # keep at most this many lots (the least recently used go)
        self._firsts: list[int] | None = None
        self._lots: OrderedDict[int, dict[int, DeviceImage]] = OrderedDict()

    async def firsts(self) -> list[int]:
        """The first index of every lot of the order with a labels.lot, ascending."""
        if self._firsts is None:
            prefix = keys.lots_prefix(self.order_id)
            found = set()
            for key in await self.store.list_keys(prefix):
                first, _, name = key[len(prefix) :].partition("/")
                if name == lots.LABELS and first.isdigit():
                    found.add(int(first))
            self._firsts = sorted(found)
        return self._firsts

    async def lot(self, first: int) -> dict[int, DeviceImage]:
        """index → image of the lot starting at `first` (empty when it has no labels.lot)."""
        held = self._lots.get(first)
        if held is not None:
            self._lots.move_to_end(first)
            return held
        key = keys.labels_lot_key(self.order_id, first)
        body = await self.store.get_or_none(key)
        images = {i.index: i for i in ([] if body is None else lot_images_of(body, key))}
        if images:  # an empty one may still be written: look again next time
            self._lots[first] = images
            while self.max_lots is not None and len(self._lots) > self.max_lots:
                self._lots.popitem(last=False)
        return images

    async def get(self, index: int) -> DeviceImage | None:
        """A device's generation-0 image; None when its lot is not built (or predates lots)."""
        stale = self._firsts is not None  # listed before: lots built since are not in it
        found = await self._find(index)
        if found is None and stale:
            self._firsts = None
            found = await self._find(index)
        return found

    async def _find(self, index: int) -> DeviceImage | None:
        firsts = await self.firsts()
        pos = bisect.bisect_right(firsts, index) - 1
        return None if pos < 0 else (await self.lot(firsts[pos])).get(index)

    async def all(self, concurrency: int = 8) -> dict[int, DeviceImage]:
        """Every built device's generation-0 image (a GET per lot, a few at a time)."""
        sem = asyncio.Semaphore(concurrency)

        async def one(first: int) -> dict[int, DeviceImage]:
            async with sem:
                return await self.lot(first)

        out: dict[int, DeviceImage] = {}
        for got in await asyncio.gather(*(one(f) for f in await self.firsts())):
            out.update(got)
        return out


async def pipeline_image(store: Store, order_id: str, index: int) -> DeviceImage | None:
    """A device's generation-0 image as built: its record if one was written (orders indexed
    from their manifest, device-key records), else its onboarding.json in its labels.lot."""
    listed = await store.list_keys(keys.device_prefix(order_id, index))
    zeros = sorted(k for k in listed if (m := keys.IMAGE_RE.search(k)) and m.group(1) == "0000")
    if zeros:
        # The first is the pipeline's (`image-0000-.json` sorts before one with a DAC serial).
        return DeviceImage.model_validate_json(await store.get(zeros[0]))
    return await LotImages(store, order_id).get(index)


async def record_bound_dac(
    store: Store, device_id: str, generation: int, dac_serial: str, waits: int = 20
) -> bool:
    """Index the DAC a station bound to a device-key device (made in the device, signed at the
    station): the device's pipeline image (its labels.lot record, with no DAC) again for the
    DAC's generation, with its serial, so `device find --dac-serial` and `dac revoke` reach it.
    Waits up to `waits` x 0.5 s for the builder's labels.lot; False if it never came.
    """
    order_id, index = split_device_id(device_id)
    for attempt in range(waits + 1):
        base = await pipeline_image(store, order_id, index)
        if base is not None:
            break
        if attempt < waits:
            await asyncio.sleep(0.5)
    else:
        return False
    image = base.model_copy(
        update={
            "generation": generation,
            "dac_serial": dac_serial,
            "source": "pipeline" if generation == 0 else "reissue",
            "at": utcnow(),
        }
    )
    await record_image(store, image)
    return True


def split_device_id(device_id: str) -> tuple[str, int]:
    """(order_id, index) of `<order_id>/<7 digits>`; InvalidInput otherwise."""
    order_id, _, index = device_id.rpartition("/")
    if not ORDER_ID_RE.match(order_id) or len(index) != 7 or not index.isdigit():
        raise invalid("device", f"must be <order_id>/<7-digit index>, got {device_id!r}")
    return order_id, int(index)


def normalise_mac(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff from any of aa:bb:.., AA-BB-.., aabbccddeeff; InvalidInput otherwise."""
    digits = mac.strip().lower().replace(":", "").replace("-", "")
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise invalid("mac", f"must be 6 hex octets, got {mac!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class NotFound(LookupError):
    """No device answers to that identity (the CLI's exit 2)."""


async def resolve(store: Store, kind: str, value: str) -> str:
    """The device_id an identity leads to; NotFound when none, InvalidInput when malformed."""
    if kind == "device_id":
        split_device_id(value)
        return value
    if kind == "mac":
        held = await objects.read_mac_claim(store, normalise_mac(value))
        if held is None:
            raise NotFound(f"no device with MAC {normalise_mac(value)}")
        return held.device_id
    if kind == "dac_serial":
        serial = value.strip().lower().removeprefix("0x").replace(":", "")
        if not serial or any(c not in "0123456789abcdef" for c in serial):
            raise invalid("dac_serial", f"must be hex, got {value!r}")
        serial = serial.lstrip("0") or "0"
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        key = keys.dac_key(serial)
    elif kind == "qr":
        try:
            p = payload.decode_qr(value.strip())
        except (ValueError, KeyError) as exc:
            raise invalid("qr", f"is not a Matter QR payload (MT:...): {exc}") from None
        key = keys.qr_key(p.vendor_id, p.product_id, p.discriminator, p.passcode)
    elif kind == "serial":
        raise invalid("serial", "needs the product: use resolve_serial")
    else:
        raise invalid("kind", f"must be one of {', '.join(KINDS)}")
    raw = await store.get_or_none(key)
    if raw is None:
        raise NotFound(f"no device with {kind.replace('_', ' ')} {value}{NOT_INDEXED}")
    return Pointer.model_validate_json(raw).device_id


async def resolve_serial(store: Store, serial: str) -> list[str]:
    """The devices with this serial number, across products: one LIST, a GET per product."""
    found = await store.list_keys(keys.serial_prefix(serial))
    docs = await asyncio.gather(*(store.get(k) for k in found if k.endswith(".json")))
    return sorted({Pointer.model_validate_json(raw).device_id for raw in docs})


@dataclass
class DeviceView:
    """What `device find` prints about one device."""

    device_id: str
    order_id: str
    index: int
    state: str
    attestation_profile: str | None = None
    dac_storage: str | None = None
    image: DeviceImage | None = None
    station: StationResult | None = None
    scrap: Scrap | None = None
    dacs: list[dict[str, Any]] = field(default_factory=list)  # every generation's DAC
    certify_grants: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `--json` form."""
        img = self.image
        st = self.station
        return {
            "device_id": self.device_id,
            "order_id": self.order_id,
            "index": index_str(self.index),
            "state": self.state,
            "attestation_profile": self.attestation_profile,
            "dac_storage": self.dac_storage,
            "serial_num": img.serial_num if img else None,
            "vendor_id": img.vendor_id if img else None,
            "product_id": img.product_id if img else None,
            "discriminator": img.discriminator if img else None,
            "qr_payload": img.qr_payload if img else None,
            "manual_code": img.manual_code if img else None,
            "generation": img.generation if img else None,
            "dac_serial": img.dac_serial if img else None,
            "dacs": self.dacs,
            "line": st.line if st else None,
            "station_id": st.station_id if st else None,
            "station_status": st.status if st else None,
            "mac": st.mac if st else None,
            "flashed_at": st.at.isoformat() if st and st.status == "flashed" else None,
            "scrapped": None if self.scrap is None else self.scrap.model_dump(mode="json"),
            "certify_grants": self.certify_grants,
        }


def derive_state(
    image: DeviceImage | None,
    current_revoked: bool,
    station: StationResult | None,
    scrapped: bool,
) -> str:
    """The one state a device is in, by precedence (records.STATES)."""
    if scrapped:
        return "scrapped"
    if image is not None and image.dac_serial and current_revoked:
        return "revoked"
    if image is not None and image.generation > 0:
        return "reissued"
    if station is not None and station.status == "flashed":
        return "bound" if station.mac else "flashed"
    if image is not None:
        return "built"
    return "allocated"


async def device_view(store: Store, device_id: str) -> DeviceView:
    """Everything the bucket knows of one device; NotFound when it is not a device of an order."""
    order_id, index = split_device_id(device_id)
    order, listed, station_raw = await asyncio.gather(
        objects.read_order_fields(store, order_id),
        store.list_keys(keys.device_prefix(order_id, index)),
        store.get_or_none(station_record_key(order_id, index)),
    )
    if order is None:
        raise NotFound(f"no device {device_id}: no order {order_id}")
    if index >= (order.quantity or 0):
        raise NotFound(f"no device {device_id}: order {order_id} has {order.quantity} devices")
    profile = str(order.attestation_profile)
    images: dict[int, str] = {}
    grants = []
    scrap_key = None
    for key in listed:
        name = key.rsplit("/", 1)[1]
        if m := keys.IMAGE_RE.match(name):
            # A device-key device's first record has no DAC serial; the one written when
            # its DAC is certified (same generation) is the one to show.
            if int(m.group(1)) not in images or m.group(2):
                images[int(m.group(1))] = key
        elif m := keys.CERTIFY_RE.match(name):
            grants.append(int(m.group(1)))
        elif name == keys.SCRAPPED:
            scrap_key = key
    image_docs = await asyncio.gather(*(store.get(images[g]) for g in sorted(images)))
    all_images = [DeviceImage.model_validate_json(raw) for raw in image_docs]
    if 0 not in images:  # the pipeline's image: the device's piece of its labels.lot
        built = await LotImages(store, order_id).get(index)
        if built is not None:
            all_images.insert(0, built)
    revs = await asyncio.gather(
        *(store.get_or_none(keys.revocation_key(profile, i.dac_serial)) for i in all_images)
    )
    dacs = []
    for img, rev_raw in zip(all_images, revs, strict=True):
        rev = None if rev_raw is None else Revocation.model_validate_json(rev_raw)
        dacs.append(
            {
                "generation": img.generation,
                "dac_serial": img.dac_serial,
                "revoked": None
                if rev is None
                else {"reason": rev.reason, "at": rev.at.isoformat(), "by": rev.by},
            }
        )
    current = all_images[-1] if all_images else None
    station = None if station_raw is None else decode(station_raw, StationResult)
    scrap = None
    if scrap_key is not None:
        scrap = Scrap.model_validate_json(await store.get(scrap_key))
    state = derive_state(current, bool(dacs and dacs[-1]["revoked"]), station, scrap is not None)
    return DeviceView(
        device_id=device_id,
        order_id=order_id,
        index=index,
        state=state,
        attestation_profile=profile,
        dac_storage=order.dac_storage or "factory-nvs",
        image=current,
        station=station,
        scrap=scrap,
        dacs=dacs,
        certify_grants=sorted(grants),
    )


async def current_images(
    store: Store, order_id: str, built: LotImages | None = None
) -> dict[int, tuple[int, str]]:
    """index → (generation, dac serial) of every device of an order with an image.

    One LIST of the order's fleet records, then its labels.lot objects for the generation-0
    images (one GET per lot); `built` shares the lots already read.
    """
    out: dict[int, tuple[int, str]] = {
        i: (0, img.dac_serial)
        for i, img in (await (built or LotImages(store, order_id)).all()).items()
    }
    for key in await store.list_keys(keys.order_prefix(order_id)):
        rest = key[len(keys.order_prefix(order_id)) :]
        index, _, name = rest.partition("/")
        if (m := keys.IMAGE_RE.match(name)) and index.isdigit():
            gen = int(m.group(1))
            held = out.get(int(index))
            if held is None or held[0] < gen or (held[0] == gen and m.group(2)):
                out[int(index)] = (gen, m.group(2))
    return out


async def order_counts(store: Store, order_id: str) -> dict[str, int]:
    """An order's `scrapped` and `revoked` devices (current DAC revoked), as event counts."""
    order = await objects.read_order_fields(store, order_id)
    if order is None:
        raise NotFound(f"no order {order_id}")
    listed = await store.list_keys(keys.order_prefix(order_id))
    scrapped = sum(1 for k in listed if k.endswith("/" + keys.SCRAPPED))
    prefix = keys.revocations_prefix(str(order.attestation_profile))
    revoked_serials = {
        k[len(prefix) :].removesuffix(".json") for k in await store.list_keys(prefix)
    }
    revoked = 0
    if revoked_serials:  # else no device's images need reading
        current = await current_images(store, order_id)
        revoked = sum(1 for _, serial in current.values() if serial and serial in revoked_serials)
    quantity = order.quantity or 0
    # `ready` as far as known without counting: a reader that takes the latest progress event
    # as the order's state must not see a completed order's images drop to none.
    done = await objects.is_completed(store, order_id)
    return {
        "scrapped": scrapped,
        "revoked": revoked,
        "quantity": quantity,
        "ready": quantity if done else 0,
    }


async def reindex(store: Store, order_id: str, concurrency: int = 32) -> int:
    """Write the pointers of every built device of an order (`device reindex`): built devices
    not flashed yet become findable by serial, DAC serial and QR payload.

    From the order's labels.lot objects (one GET per lot), so an order still being built is
    indexed as far as it is built; an order built before lots is indexed from its
    manifest.json (image records and pointers, as before). Write-once: devices already
    indexed are no-ops. Returns the number of devices indexed.
    """
    if not ORDER_ID_RE.match(order_id):
        raise invalid("order", f"must be 1..64 of [A-Za-z0-9._-], got {order_id!r}")
    if not await objects.has_order(store, order_id):
        raise NotFound(f"no order {order_id}")
    built = await LotImages(store, order_id).all()
    if built:
        images, write = list(built.values()), record_pointers
    else:
        images, write = await manifest_images(store, order_id), record_image
    sem = asyncio.Semaphore(concurrency)

    async def one(image: DeviceImage) -> None:
        async with sem:
            await write(store, image)

    await asyncio.gather(*(one(i) for i in images))
    return len(images)


async def manifest_images(store: Store, order_id: str) -> list[DeviceImage]:
    """The generation-0 images of a completed order as its manifest.json lists them."""
    devices = await objects.read_manifest_devices(store, order_id)
    if devices is None:
        raise NotFound(f"order {order_id} has no built device yet (no labels.lot, no manifest)")
    return [
        DeviceImage(
            device_id=d["device_id"],
            order_id=order_id,
            index=int(d["index"]),
            generation=0,
            serial_num=str(d["serial_num"]),
            vendor_id=int(d["vendor_id"]),
            product_id=int(d["product_id"]),
            discriminator=int(d["discriminator"]),
            qr_payload=d["qr_payload"],
            manual_code=str(d["manual_code"]),
            dac_serial=str(d["dac_serial"] or ""),
            objects={k: v for k, v in d["objects"].items() if k in IMAGE_REFS},
        )
        for d in devices
    ]


backfill = reindex  # the name before lots (#22)
