"""A factory station: take ready images off the line's queue, flash them, report each device.

Stations of one line share the consumer group `matterfab-station-<line>`, so each image goes
to exactly one of them. Per image (`Station.handle`):

1. skip it if the station works one order (`order`) and this is another's, or if the order is
   sealed for another line (committed past; `sealed.py`);
2. if the device already has a final outcome in the bucket (`station_record_key`), publish
   that again and flash nothing: a redelivered or re-queued image never reaches a second board;
3. download the partition (and XTS keys, esp_secure_cert): each its device's piece of the
   lot's `images.lot`, one ranged GET a piece (a whole object for older images and re-issues),
   open the sealed ones in memory
   (`sealed.py`: one that does not open is never flashed and never a final failure), check
   their sha256 against the message, and in an order with a firmware bundle every bundle
   file against `bundle.json` (bundles are loaded once and cached by sha256): a mismatch
   is a final failure (the stored image is corrupt; flashing it again cannot help);
4. flash, up to `max_attempts` times with doubling backoff: write to a folder, or run the flash
   command template with a timeout and read the MAC from its output;
5. flashed: record the outcome write-once, then publish it. Failed: publish a non-final
   failure and put the image back on `mfg.images.ready` (`requeues` + 1) for the next board
   or station; after `max_requeues` the failure is final, recorded and published.

The runtime publishes the results and only then commits the offset (at least once): a station
that dies mid-image leaves it uncommitted, and it is delivered again. With the default batch
of 1, at most the image in hand is redone. Every device thus ends flashed or failed for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from matterfab.errors import IntegrityError, InvalidInput
from matterfab.firmware import OrderBundles
from matterfab.messages import IMAGES_READY, STATION_RESULTS, ImageReady, StationResult, encode
from matterfab.messages.base import ObjectRef, index_str, utcnow
from matterfab.messages.codec import decode
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.messages.station import station_record_key
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore
from matterfab.services.station import commands, device_key, efuse, eol, flashing
from matterfab.services.station.config import StationSettings
from matterfab.services.station.printing import LabelPrinting
from matterfab.services.station.sealed import SealedImages, Unopenable

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class FlashFailed(Exception):
    """One flash attempt failed; the message is the reason reported to the line."""


class Flasher(Protocol):
    """Puts one image on one device and returns the device's MAC."""

    async def flash(self, msg: ImageReady, partition: bytes, keys: bytes | None) -> str:
        """Flash the image; the device's MAC, or FlashFailed(reason)."""
        ...


@runtime_checkable
class ImageFlasher(Protocol):
    """A flasher that also takes whole-device images (firmware bundles, esp_secure_cert)."""

    async def flash_image(self, msg: ImageReady, image: flashing.DeviceImage) -> str:
        """Flash every file of the image; the device's MAC, or FlashFailed(reason)."""
        ...


class FolderFlasher:
    """Writes images to `<out>/<order_id>/<index>/partition.bin` (+ `nvs_keys.bin`,
    `esp_secure_cert.bin`); in a bundle order also every bundle file and `flash_args` (one
    `offset file` line per file, in flash order), and with `merged` one whole-flash
    `merged.bin` made by esptool's merge-bin.

    For lines whose programmer picks files up from a folder, and for tests. There is no chip
    to read a MAC from, so the MAC is synthetic and deterministic (`flashing.synthetic_mac`).
    """

    def __init__(self, out: Path, mac_prefix: str | None, merged: bool = False):
        self.out = out
        self.mac_prefix = mac_prefix
        self.merged = merged

    async def flash(self, msg: ImageReady, partition: bytes, keys: bytes | None) -> str:
        """Write the files atomically (temp file, then rename)."""
        return await self.flash_image(msg, flashing.DeviceImage(partition, keys))

    async def flash_image(self, msg: ImageReady, image: flashing.DeviceImage) -> str:
        """Write the image's files atomically (temp file, then rename)."""
        folder = self.out / msg.order_id / index_str(msg.index)
        files = {"partition.bin": image.partition}
        if image.keys is not None:
            files["nvs_keys.bin"] = image.keys
        if image.secure_cert is not None:
            files["esp_secure_cert.bin"] = image.secure_cert
        if image.files:
            files.update({f.name: f.data for f in image.files})
            files["flash_args"] = flashing.flash_args_text(image.files).encode()
            if self.merged and image.chip is not None:
                files["merged.bin"] = await asyncio.to_thread(
                    flashing.merged_image, image.chip, image.files
                )
        try:
            await asyncio.to_thread(_write_files, folder, files)
        except OSError as exc:
            raise FlashFailed(f"cannot write {folder}: {exc}") from exc
        return flashing.synthetic_mac(self.mac_prefix, msg.order_id, msg.index)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)


class CommandFlasher:
    """Runs the flash command template on temporary copies of the image files."""

    def __init__(self, settings: StationSettings):
        assert settings.flash_cmd is not None
        self.template = settings.flash_cmd
        self.port = settings.port
        self.offset = settings.offset
        self.timeout = settings.timeout
        self.pattern = flashing.compile_mac_pattern(settings.mac_pattern)

    async def flash(self, msg: ImageReady, partition: bytes, keys: bytes | None) -> str:
        """Run the command; exit 0 and a MAC in its output is success."""
        return await self.flash_image(msg, flashing.DeviceImage(partition, keys))

    async def flash_image(self, msg: ImageReady, image: flashing.DeviceImage) -> str:
        """Run the command on copies of the image's files; exit 0 and a MAC is success."""
        # A private folder (mkdtemp: 0700, owner only) holds the opened secrets just for the
        # command's run; it is removed right after, whatever the outcome.
        workdir = Path(tempfile.mkdtemp(prefix="matterfab-station-"))
        try:
            own = {"partition.bin": image.partition, "nvs_keys.bin": image.keys}
            own["esp_secure_cert.bin"] = image.secure_cert
            paths: dict[str, str] = {}
            for name, data in [*own.items(), *((f.name, f.data) for f in image.files)]:
                if data is not None:
                    (workdir / name).write_bytes(data)
                    paths[name] = str(workdir / name)
            fctry = next((f for f in image.files if f.name == "partition.bin"), None)
            values: dict[str, str | list[str] | None] = {
                "partition": paths["partition.bin"],
                "keys": paths.get("nvs_keys.bin"),
                "secure_cert": paths.get("esp_secure_cert.bin"),
                "offset": f"0x{fctry.offset:X}" if fctry else msg.partition_offset or self.offset,
                "port": self.port,
                "serial_num": msg.serial_num,
                "device_id": msg.device_id,
                "chip": image.chip,
                "flash_args": flashing.flash_args(image.files, paths) if image.files else None,
            }
            try:
                argv = flashing.render_command(self.template, values)
            except InvalidInput as exc:
                raise FlashFailed(str(exc)) from exc
            try:
                output = await commands.run("flash command", argv, self.timeout)
            except commands.CommandFailed as exc:
                raise FlashFailed(str(exc)) from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        try:
            mac = flashing.parse_mac(output, self.pattern)
        except InvalidInput as exc:
            raise FlashFailed(str(exc)) from exc
        if mac is None:
            raise FlashFailed(f"no MAC in the flash output: {commands.tail(output)!r}")
        return mac


def make_flasher(settings: StationSettings) -> Flasher:
    """The flasher the settings ask for: a folder or a command."""
    if settings.out is not None:
        return FolderFlasher(settings.out, settings.test_mac_prefix, settings.merged)
    return CommandFlasher(settings)


class Station:
    """Handles one ImageReady at a time for the runtime (see the module docstring)."""

    def __init__(
        self,
        settings: StationSettings,
        store: ObjectStore,
        flasher: Flasher,
        rng: random.Random | None = None,
        printing: LabelPrinting | None = None,
        device_keys: device_key.DeviceKeys | None = None,
        sealed: SealedImages | None = None,
    ):
        self.settings = settings
        self.sealed = sealed or SealedImages(settings.line, None)
        self.store = store
        self.flasher = flasher
        self.printing = printing  # labels printed after each flash (--print-zpl/--print-cmd)
        self.device_keys = device_keys or device_key.for_station(settings, store, None)
        self.rng = rng or random.Random()  # noqa: S311 - drives the fail_rate test knob only
        self.bundles = OrderBundles(store)

    async def handle(self, msg: ImageReady) -> list[Emit]:
        """Flash one image; the results (and a re-queued image) to publish."""
        s = self.settings
        if s.order is not None and msg.order_id != s.order:
            return []
        if self.sealed.skip(msg):
            return []
        key = station_record_key(msg.order_id, msg.index)
        existing = await self.store.get_or_none(key)
        if existing is not None:
            log.info("device already has a final outcome; re-published", extra=_ctx(msg))
            return [self._emit(decode(existing, StationResult))]
        try:
            image = await self._download(msg)
            burn_key = await self._efuse_key(msg, image)
        except Unopenable as exc:
            failed = self._result(msg, "failed", reason=f"sealed: {exc}")
            emit = self._emit(failed.model_copy(update={"final": False}))
            return self.sealed.left(msg, exc, s.max_requeues, emit)
        except FlashFailed as exc:
            log.error("image unusable: %s", exc, extra=_ctx(msg))
            return await self._final(self._result(msg, "failed", reason=str(exc)))
        # A device-key image on a station that cannot bind its key is not flashed here: it goes
        # back to the line (re-queued, like a failed flash) for a station that can.
        refused = await self.device_keys.refuse_before_flash(msg)
        attempts, mac, reason = (1, None, refused) if refused else await self._flash(msg, image)
        if mac is not None and burn_key is not None:
            burnt = await self._burn(msg, burn_key)
            if burnt is not None:  # irreversible: final, never re-queued (efuse.py)
                return await self._final(
                    self._result(msg, "failed", reason=burnt, attempts=attempts)
                )
        if mac is not None:
            try:  # dac_storage device-key: the device's CSR out, its DAC in (else nothing)
                bound = await self.device_keys.bind(msg, mac, image.chip)
            except device_key.DeviceKeyFailed as exc:
                log.error("device key not bound: %s", exc, extra=_ctx(msg))
                failed = self._result(msg, "failed", reason=str(exc), mac=mac, attempts=attempts)
                return await self._final(failed)
            result = self._result(msg, "flashed", mac=mac, attempts=attempts, **bound)
            log.info("flashed", extra={**_ctx(msg), "mf_mac": mac, "mf_attempts": attempts})
            # A label per device (bounded, never raises: the flash result goes out); none for a
            # dynamic passcode, whose device shows its own code.
            if self.printing is not None and msg.qr_payload:
                label = await self.printing.print(msg, mac)
                result = result.model_copy(update={"label": label})
            emits = await self._final(result)
            if s.eol_cmd is not None:
                await eol.check(self.store, s.eol_cmd, s.port, s.station_id, msg, s.timeout)
            return emits
        result = self._result(msg, "failed", reason=reason, attempts=attempts)
        if msg.requeues < s.max_requeues:
            log.warning(
                "flash failed %d times (%s); image re-queued", attempts, reason, extra=_ctx(msg)
            )
            requeued = msg.model_copy(update={"requeues": msg.requeues + 1, "at": utcnow()})
            return [
                self._emit(result.model_copy(update={"final": False})),
                Emit(IMAGES_READY, msg.device_id, requeued),
            ]
        log.error(
            "flash failed for good after %d re-queues (%s)", msg.requeues, reason, extra=_ctx(msg)
        )
        return await self._final(result)

    async def _fetch(self, ref: ObjectRef) -> bytes | None:
        """A ref's bytes: its piece of a lot object (`images.lot`) with one ranged GET, or a
        whole per-device object (images built before lots, re-issues); None if absent."""
        if ref.offset is None:
            return await self.store.get_or_none(ref.key)
        return await self.store.get_range(ref.key, ref.offset, ref.size)

    async def _download(self, msg: ImageReady) -> flashing.DeviceImage:
        names = ("partition", "nvs_keys", "secure_cert")
        blobs: list[bytes | None] = []
        for name in names:
            ref = getattr(msg.objects, name)
            if ref is None:
                blobs.append(None)
                continue
            data = await self._fetch(ref)
            if data is None:
                raise FlashFailed(f"{ref.key}: no such object")
            if msg.line is not None:  # sealed: opened (and its plaintext checked) in memory
                plain = self.sealed.open(msg, name, data)
                digest = hashlib.sha256(data).hexdigest()
                if digest != ref.sha256 or len(data) != ref.size:
                    raise Unopenable(
                        f"{OBJECT_FILES[name]}: opened, but the sealed object's sha256 does not "
                        "match the message's (resealed)",
                        key_not_held=False,
                    )
                blobs.append(plain)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != ref.sha256 or len(data) != ref.size:
                raise FlashFailed(
                    f"{ref.key}: sha256 {digest} ({len(data)} bytes) does not match the "
                    f"message's {ref.sha256} ({ref.size} bytes)"
                )
            blobs.append(data)
        partition, keys, secure_cert = blobs
        assert partition is not None
        try:
            bundle = await self.bundles.for_order(msg.order_id)
            return flashing.device_image(bundle, partition, keys, secure_cert)
        except InvalidInput as exc:
            raise FlashFailed(str(exc)) from exc

    async def _efuse_key(
        self, msg: ImageReady, image: flashing.DeviceImage
    ) -> efuse.EfuseKey | None:
        """The eFuse burn an image asks for (secure_cert key ecdsa-peripheral), checked."""
        ref = msg.objects.efuse_key
        if ref is None:
            return None
        if self.settings.efuse_cmd is None and self.settings.out is None:
            raise FlashFailed("this image needs an eFuse burn: give the station --efuse-cmd")
        data = await self._fetch(ref)
        if data is None or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise FlashFailed(f"{ref.key}: missing or not the message's sha256")
        data = self.sealed.open(msg, "efuse_key", data)  # sealed like every device secret
        if image.secure_cert is None:
            raise FlashFailed("an eFuse key without an esp_secure_cert naming its block")
        try:
            return efuse.efuse_key(data, image.secure_cert, msg.efuse_chip)
        except InvalidInput as exc:
            raise FlashFailed(str(exc)) from exc

    async def _burn(self, msg: ImageReady, burn_key: efuse.EfuseKey) -> str | None:
        """Burn the key (or, writing to a folder without --efuse-cmd, write it there)."""
        s = self.settings
        if s.efuse_cmd is None:
            assert s.out is not None
            folder = s.out / msg.order_id / index_str(msg.index)
            await asyncio.to_thread(_write_files, folder, {"efuse_key.bin": burn_key.key})
            return None
        try:
            await efuse.burn(s.efuse_cmd, burn_key, s.port, s.timeout)
        except efuse.BurnFailed as exc:
            log.error("eFuse burn failed: %s", exc, extra=_ctx(msg))
            return f"eFuse burn failed (not re-queued: the board may hold the key): {exc}"
        log.info("eFuse key burned", extra={**_ctx(msg), "mf_block": burn_key.block_name})
        return None

    async def _flash(
        self, msg: ImageReady, image: flashing.DeviceImage
    ) -> tuple[int, str | None, str | None]:
        """(attempts, MAC or None, last failure reason)."""
        s = self.settings
        reason: str | None = None
        for attempt in range(1, s.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(min(s.backoff * 2 ** (attempt - 2), MAX_BACKOFF))
            try:
                if s.fail_rate and self.rng.random() < s.fail_rate:
                    raise FlashFailed("injected failure (test knob fail_rate)")
                return attempt, await self._flash_once(msg, image), None
            except FlashFailed as exc:
                reason = str(exc)
                log.info("flash attempt %d failed: %s", attempt, reason, extra=_ctx(msg))
        return s.max_attempts, None, reason

    async def _flash_once(self, msg: ImageReady, image: flashing.DeviceImage) -> str:
        if isinstance(self.flasher, ImageFlasher):
            return await self.flasher.flash_image(msg, image)
        if image.files or image.secure_cert is not None:
            raise FlashFailed("this station's flasher cannot flash bundles or esp_secure_cert")
        return await self.flasher.flash(msg, image.partition, image.keys)

    async def _final(self, result: StationResult) -> list[Emit]:
        """Record a final outcome write-once, then publish it (or the one recorded first)."""
        key = station_record_key(result.order_id, result.index)
        try:
            await self.store.put_once(key, encode(result), "application/json")
        except IntegrityError:
            first = decode(await self.store.get(key), StationResult)
            if result.status == "flashed" and first.mac != result.mac:
                # Two boards now carry this identity (a redelivery raced another station's
                # flash): the runtime dead-letters this and raises the alarm.
                raise IntegrityError(
                    f"{result.device_id} was flashed twice: first by {first.station_id} "
                    f"({first.status}, mac {first.mac}), now by {result.station_id} on the "
                    f"board with mac {result.mac}, which carries a duplicate identity: "
                    "erase or scrap that board"
                ) from None
            return [self._emit(first)]
        return [self._emit(result)]

    def _result(self, msg: ImageReady, status: str, **kw: object) -> StationResult:
        return StationResult.model_validate(
            {
                "order_id": msg.order_id,
                "device_id": msg.device_id,
                "index": msg.index,
                "serial_num": msg.serial_num,
                "station_id": self.settings.station_id,
                "line": self.settings.line,
                "status": status,
                "requeues": msg.requeues,
                **{k: v for k, v in kw.items() if v is not None},
            }
        )

    @staticmethod
    def _emit(result: StationResult) -> Emit:
        return Emit(STATION_RESULTS, result.device_id, result)


def _ctx(msg: ImageReady) -> dict[str, object]:
    return {"order_id": msg.order_id, "device_id": msg.device_id}


__all__ = [
    "CommandFlasher",
    "FlashFailed",
    "Flasher",
    "FolderFlasher",
    "ImageFlasher",
    "Station",
    "make_flasher",
]
