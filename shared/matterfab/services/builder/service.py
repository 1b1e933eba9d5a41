"""The builder: a lot's partition images, onboarding codes and QR labels, stored write-once.

decode a lot → read its DACs and their wrapped keys from the signer's `dacs.lot` (one GET) →
unwrap the keys (here, never in a worker) → build every device (verifier,
NVS image, codes, PNG) in ONE worker-process task → put the objects, all in one round of
concurrent PUTs (If-None-Match) → emit one `mfg.images.ready` per device. The CPU-heavy build
runs in a process pool, so the event loop keeps heartbeating and both cores work.

A lot makes two objects (DESIGN §5 "Lots", docs/lots-partitions.md), so two PUTs a lot:
- `images.lot`: what stations flash, every device's sealed pieces one device after another
  (`partition.bin`, then `nvs_keys.bin`, `esp_secure_cert.bin`, `efuse_key.bin` when made); a
  station reads only its device's pieces, one ranged GET each;
- `labels.lot`: every device's `qrcode.png` piece first, then every `onboarding.json` piece,
  so each onboarding record can list its QR code's byte range (and its DAC's, in the signer's
  `dacs.lot`, and its pieces' in `images.lot`) before it is serialised.
The build is deterministic given the lot (sealing too), so a redelivered lot rebuilds
identical bytes and every write-once PUT is a no-op; different bytes are an IntegrityError.

Per dac_storage: factory-nvs puts the DAC, its key and the PAI in the NVS partition;
secure-cert puts them in a write-once `esp_secure_cert.bin` instead (built in memory, like the
partition: the plaintext key never touches disk); on-module devices come without a DAC, and
their partition and records carry none.

Sealed (DESIGN §9): every piece a station flashes is sealed on its own, in memory, to the
key of the order's line (`matterfab/sealing.py`) before it is stored, bound to its order,
device and file name, its runs of 0xFF elided first when that makes it shorter (ff-runs/1: a
partition shrinks ~10x, and so does what the S3 server writes and serves, issue #26). A
lot's pieces share one HPKE encapsulation (`seal_lot`), each with a context of its own. The key
is the one the allocator fixed in the lot (`line_key`), so a rotation never splits an order.
Each ref gives the sealed piece's offset, sha256 and size, and in `sealed` the plaintext's,
which the station checks after opening. Labels, onboarding records and DACs stay plain.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from matterfab import lots, sealing
from matterfab.errors import IntegrityError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LineCatalogue, LineKey
from matterfab.matter import device, nvs
from matterfab.messages import IMAGES_READY, DeviceAttested, ImageReady, ObjectRef
from matterfab.messages.base import Sealing
from matterfab.messages.lots import LotAttested
from matterfab.messages.onboarding import OBJECT_FILES, OnboardingObjects, OnboardingRecord
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore

OCTETS = "application/octet-stream"
SEAL_PURPOSE = "matterfab sealing ephemeral keys/1"  # KeyWrapper.derive: deterministic sealing


def device_inputs(
    msg: DeviceAttested,
    dac_key: bytes,
    xts_key: bytes | None,
    product_fields: dict[str, Any] | None = None,
    dac_der: bytes | None = None,
) -> device.DeviceInputs:
    """The pure core's inputs from an attested-device message (dac_key b"" for on-module);
    `product_fields`: `msg.product.factory_fields()` if already made (a lot's devices share
    it); `dac_der`: the DAC read from dacs.lot (None: the message's `dac_cert_b64`)."""
    p = msg.product
    sc = msg.secure_cert if msg.dac_storage == "secure-cert" else None
    if dac_der is None:
        dac_der = base64.b64decode(msg.dac_cert_b64)
    factory = nvs.FactoryData(
        discriminator=msg.discriminator,
        iteration_count=msg.iteration_count,
        salt=base64.b64decode(msg.salt_b64),
        verifier=b"",
        dac_cert=dac_der,
        dac_key=dac_key,
        dac_pub_key=device.dac_public_key_raw(dac_der) if dac_der else b"",
        pai_cert=base64.b64decode(msg.pai_cert_b64),
        dac_storage=msg.dac_storage,
        cert_dclrn=base64.b64decode(msg.cd_b64),
        serial_num=msg.serial_num,
        mfg_date=msg.mfg_date,
        rd_id_uid=bytes.fromhex(msg.rd_id_uid) if msg.rd_id_uid else None,
        **(product_fields if product_fields is not None else p.factory_fields()),
        extra=tuple(nvs.ExtraEntry(e.namespace, e.key, e.type, e.value) for e in msg.extra),
        commissionable_in_secure_cert=bool(sc and sc.commissionable_data),
        rd_id_uid_in_secure_cert=bool(sc and sc.rd_id_uid),
    )
    return device.DeviceInputs(
        factory=factory,
        passcode=msg.passcode,
        flow=msg.flow,
        discovery=tuple(msg.discovery),
        partition_size=msg.partition_size,
        xts_key=xts_key,
        dynamic_passcode=msg.dynamic_passcode,
        efuse_key_id=sc.efuse_key_id if sc and sc.key == "ecdsa-peripheral" else None,
    )


# The onboarding record's fields that the attested message carries under the same name.
CARRIED = tuple(n for n in OnboardingRecord.model_fields if n in DeviceAttested.model_fields)


def carried(msg: DeviceAttested) -> dict[str, Any]:
    """The onboarding record's fields that the attested message carries under the same name."""
    return {name: getattr(msg, name) for name in CARRIED}


class Builder:
    """Builds and stores device images, a lot at a time."""

    def __init__(self, store: ObjectStore, wrapper: KeyWrapper, executor: Executor | None):
        self.store = store
        self.wrapper = wrapper
        self.executor = executor
        self.lines = LineCatalogue(store)
        self.seal_secret = wrapper.derive(SEAL_PURPOSE)

    async def line_key(self, lot: LotAttested) -> LineKey:
        """The key the lot's order is sealed to: the one fixed at acceptance, else current."""
        if lot.line_key is not None:
            found = await self.lines.by_fingerprint(lot.line, lot.line_key)
            if found is None:
                raise invalid("line_key", f"line {lot.line} has no key {lot.line_key}")
            return found
        current = await self.lines.current(lot.line)
        if current is None:
            raise invalid("line", f"no line {lot.line} is registered (`matterfab line list`)")
        return current

    async def lot_dacs(
        self, views: list[tuple[DeviceAttested, ObjectRef | None]]
    ) -> dict[int, tuple[bytes, str]]:
        """index -> (DAC, wrapped key) of each device whose DAC is only in dacs.lot (the signer
        sends none inline): one GET per dacs.lot, every piece where its ref says and checked
        against its digest (IntegrityError otherwise)."""
        wanted = [
            (msg, ref)
            for msg, ref in views
            if msg.dac_storage not in nvs.NO_DAC_AT_BUILD
            and not msg.dac_cert_b64
            and ref is not None
        ]
        by_key: dict[str, list[tuple[DeviceAttested, ObjectRef]]] = {}
        for msg, ref in wanted:
            by_key.setdefault(ref.key, []).append((msg, ref))
        found: dict[int, tuple[bytes, str]] = {}
        for key, devices in by_key.items():
            stored = lots.unpack(await self.store.get(key), key)
            entries = stored.named(lots.DAC_PIECE)
            for msg, ref in devices:
                e = entries.get(msg.index)
                if e is None or (e.offset, e.sha256, e.size) != (ref.offset, ref.sha256, ref.size):
                    raise IntegrityError(f"{key}: the DAC of device {msg.index} is not its ref's")
                wrapped = e.meta.get(lots.DAC_KEY_META)
                if not wrapped:
                    raise IntegrityError(f"{key}: the DAC of device {msg.index} has no wrapped key")
                found[msg.index] = (stored.cut(e), wrapped)
        return found

    def _inputs(
        self,
        n: int,
        msg: DeviceAttested,
        dac: ObjectRef | None,
        product: dict[str, Any],
        from_lot: dict[int, tuple[bytes, str]],
    ) -> device.DeviceInputs:
        """Device `n` of a lot as the core's inputs, its keys unwrapped (checked first);
        `product`: the lot's `factory_fields()`; `from_lot`: the DACs read from dacs.lot."""
        where = f"devices[{n}]"
        dac_key = b""
        der = None
        if msg.dac_storage not in nvs.NO_DAC_AT_BUILD:
            rule = f"is required when dac_storage is {msg.dac_storage}"
            if dac is None:
                raise invalid(f"{where}.dac", rule)
            if msg.dac_cert_b64:  # inline, as signers sent it before issue #26
                if not msg.dac_key_wrapped:
                    raise invalid(f"{where}.dac_key_wrapped", "is required with dac_cert_b64")
                der, wrapped = base64.b64decode(msg.dac_cert_b64), msg.dac_key_wrapped
                if dac.size != len(der) or dac.sha256 != hashlib.sha256(der).hexdigest():
                    raise invalid(f"{where}.dac", "must be the ref of dac_cert_b64's bytes")
            elif msg.dac_key_wrapped:
                raise invalid(f"{where}.dac_cert_b64", "is required with dac_key_wrapped")
            else:
                der, wrapped = from_lot[msg.index]
            dac_key = self.wrapper.unwrap(wrapped, f"dac-key:{msg.device_id}")
        xts_key = None
        if msg.encryption == "xts":
            if not msg.nvs_keys_wrapped:
                raise invalid(f"{where}.nvs_keys_wrapped", "is required when encryption is xts")
            xts_key = self.wrapper.unwrap(msg.nvs_keys_wrapped, f"nvs-keys:{msg.device_id}")
        return device_inputs(msg, dac_key, xts_key, product, der)

    async def handle(self, lot: LotAttested) -> list[Emit]:
        """Build one lot and announce each of its devices' images."""
        views = list(lot.attested())
        line_key = await self.line_key(lot)
        public = line_key.public_key()
        product = lot.product.factory_fields()  # once a lot, not once a device
        from_lot = await self.lot_dacs(views)
        inputs = [
            self._inputs(n, msg, dac, product, from_lot) for n, (msg, dac) in enumerate(views)
        ]
        loop = asyncio.get_running_loop()
        built = await loop.run_in_executor(self.executor, device.build_devices, inputs)
        labels_key = lots.lot_key(lot.order_id, lot.devices[0].index, lots.LABELS)
        pngs = [
            lots.Piece(msg.index, OBJECT_FILES["qrcode"], art.qrcode_png)
            for (msg, _), art in zip(views, built, strict=True)
        ]
        images_key = lots.lot_key(lot.order_id, lot.devices[0].index, lots.IMAGES)
        # What a station flashes, by ref name, sealed to the order's line in memory, each piece
        # bound to its order, device and file name: the whole lot's pieces at once.
        secret_files = [
            (msg.device_id, flash_files(art)) for (msg, _), art in zip(views, built, strict=True)
        ]
        sealed_lot = seal_lot(secret_files, images_key, line_key, public, self.seal_secret)
        flashed: list[lots.Piece] = []  # every device's sealed pieces, device after device
        device_refs: list[dict[str, ObjectRef]] = []
        for (msg, _), sealed in zip(views, sealed_lot, strict=True):
            refs = {}
            for name, (blob, ref) in sealed.items():
                refs[name] = ref
                flashed.append(lots.Piece(msg.index, OBJECT_FILES[name], blob))
            device_refs.append(refs)
        images, placed_entries = lots.pack(flashed)
        placed = iter(placed_entries)  # in the order of `flashed`: device after device
        records = []
        for (msg, dac), art, png, refs in zip(
            views, built, lots.layout(pngs), device_refs, strict=True
        ):
            # Each sealed ref becomes its piece's: same digests, plus the offset in images.lot.
            refs = {
                name: ref.model_copy(update={"offset": next(placed).offset})
                for name, ref in refs.items()
            }
            refs["qrcode"] = _piece_ref(labels_key, png)
            if dac is not None and msg.dac_storage not in nvs.NO_DAC_AT_BUILD:
                refs["dac"] = dac  # the signer's piece of dacs.lot, stored before it emitted
            records.append(
                OnboardingRecord(
                    **carried(msg),
                    vendor_id=msg.product.vendor_id,
                    product_id=msg.product.product_id,
                    qr_payload=art.qr_payload,
                    manual_code=art.manual_code,
                    objects=OnboardingObjects(**refs),
                )
            )
        docs = [lots.Piece(r.index, OBJECT_FILES["onboarding"], r.to_json()) for r in records]
        body, entries = lots.pack([*pngs, *docs])
        # One round: the lot's two objects at once (refs were computed from the bytes).
        await asyncio.gather(
            self.store.put_once(images_key, images, OCTETS),
            self.store.put_once(labels_key, body, OCTETS),
        )
        return [
            Emit(
                IMAGES_READY,
                record.device_id,
                # No inline PNG: it is in labels.lot (objects.qrcode), and 1.1 KB of base64 per
                # record was two thirds of mfg.images.ready, which the embedded broker rewrites
                # to its snapshot every second it retains it.
                ImageReady.of(
                    record,
                    lot.order_id,
                    _piece_ref(labels_key, entry),
                    efuse_chip=_efuse_chip(lot) if record.objects.efuse_key else None,
                ),
            )
            for record, entry in zip(records, entries[len(pngs) :], strict=True)
        ]


def _efuse_chip(lot: LotAttested) -> str | None:
    return lot.secure_cert.chip if lot.secure_cert is not None else None


def flash_files(art: device.DeviceArtifacts) -> dict[str, bytes]:
    """A built device's secret objects, by ref name: what a station flashes, to be sealed."""
    files = {"partition": art.partition}
    if art.nvs_keys is not None:
        files["nvs_keys"] = art.nvs_keys
    if art.secure_cert is not None:
        files["secure_cert"] = art.secure_cert
    if art.efuse_key is not None:
        files["efuse_key"] = art.efuse_key
    return files


def seal_lot(
    devices: Sequence[tuple[str, dict[str, bytes]]],
    key: str,
    line_key: LineKey,
    public: sealing.X25519PublicKey,
    secret: bytes,
) -> list[dict[str, tuple[bytes, ObjectRef]]]:
    """Several devices' secret objects (device id, {ref name: bytes}) sealed to their line, each
    piece bound to its order, device and file name, all under one encapsulation; per device,
    {name: (sealed bytes, the ref to store them under `key`)}.

    One encapsulation for a lot, not one per device (issue #26): its two X25519 operations
    were most of the builder's sealing CPU. Each piece still has its own HPKE context (its own
    info, so its own key and nonce) and opens alone; the pieces share only `enc`, which is
    public, and whoever can open one holds the line key that opens them all anyway.

    A piece whose 0xFF runs elided (ff-runs/1) is shorter than it is sealed so (a partition,
    ~10x smaller; its header names the encoding), others as they are; refs keep the
    plaintext's digest and size under `sealed`."""
    pairs: list[tuple[bytes, sealing.Binding]] = []
    for device_id, files in devices:
        order_id = device_id.rpartition("/")[0]
        for name, data in files.items():
            file = OBJECT_FILES[name]
            binding = sealing.Binding(
                line_key.line, line_key.fingerprint, order_id, device_id, file
            )
            pairs.append((data, binding))
    digests = [hashlib.sha256(data).digest() for data, _ in pairs]
    blobs = sealing.seal_device(pairs, public, secret, digests, elide=True)
    pieces = iter(zip(pairs, digests, blobs, strict=True))  # in the order of `devices`
    out = []
    for _, files in devices:
        sealed = {}
        for name, ((data, _), digest, blob) in zip(files, pieces, strict=False):
            sealed[name] = (blob, seal_ref(key, blob, data, line_key, digest))
        out.append(sealed)
    return out


def seal_files(
    files: dict[str, bytes],
    keys: dict[str, str],
    line_key: LineKey,
    public: sealing.X25519PublicKey,
    secret: bytes,
    device_id: str,
) -> dict[str, tuple[bytes, ObjectRef]]:
    """One device's secret objects (by ref name) sealed as `seal_lot` seals a lot's, each to be
    stored under its own key: {name: (sealed bytes, the ref to store them under `keys[name]`)}.
    """
    (sealed,) = seal_lot([(device_id, files)], "", line_key, public, secret)
    return {
        name: (blob, ref.model_copy(update={"key": keys[name]}))
        for name, (blob, ref) in sealed.items()
    }


def seal_ref(
    key: str, sealed: bytes, plain: bytes, line_key: LineKey, digest: bytes | None = None
) -> ObjectRef:
    """The ref of a sealed object: its own digest, and the plaintext's under `sealed`."""
    digest = digest if digest is not None else hashlib.sha256(plain).digest()
    # Built without validation (model_construct, ~8 us a device): every value is made here, by
    # hashlib and len, of the right type and shape; tests compare with validated refs.
    return ObjectRef.model_construct(
        key=key,
        sha256=hashlib.sha256(sealed).hexdigest(),
        size=len(sealed),
        sealed=Sealing.model_construct(
            line=line_key.line,
            key=line_key.fingerprint,
            sha256=digest.hex(),
            size=len(plain),
        ),
    )


def _piece_ref(key: str, entry: lots.Entry) -> ObjectRef:
    """The ref of one piece of the lot object at `key` (its values made by `lots.pack`: built
    without validation, as `seal_ref`)."""
    return ObjectRef.model_construct(
        key=key, sha256=entry.sha256, size=entry.size, offset=entry.offset
    )
