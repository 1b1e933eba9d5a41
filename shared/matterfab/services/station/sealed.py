"""What a station does with sealed images: its line's keys, other lines' orders, opening.

- At start (`check`, the runtime's start hook, before the consumer joins the line's group):
  every key the station holds must be a registered key of its line; otherwise it stops with
  one line and consumes nothing.
- An image of another line's order is skipped (committed past: that line's stations read
  the topic in their own group), with one log line per order.
- Per image, `open` reads each sealed object's plaintext in memory (lines.LineKeys.open:
  header, HPKE, plaintext sha256). An image that does not open is never flashed and never
  recorded as a final failure, so nothing is lost: one log line names the device and the
  reason, a non-final failure is published, and when the reason is a key this station does
  not hold (an order sealed before a rotation), the image goes back to the line for a station
  that holds it, at most `max_requeues` times. Objects moved between devices or altered stay
  where they are for an operator to look at; no station can open them.

Images without a `line` were built before lines and are plain: any station flashes them.
"""

from __future__ import annotations

import logging

from matterfab import lines
from matterfab.messages import IMAGES_READY, ImageReady
from matterfab.messages.base import utcnow
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.objectstore import Store
from matterfab.runtime import Emit
from matterfab.sealing import SealError

log = logging.getLogger(__name__)


class Unopenable(Exception):
    """An image's sealed object does not open here; the message is the reason."""

    def __init__(self, reason: str, key_not_held: bool):
        super().__init__(reason)
        self.key_not_held = key_not_held


class SealedImages:
    """A station's line keys and what it does with other lines' and unopenable images."""

    def __init__(self, line: str, keys: lines.LineKeys | None):
        self.line = line
        self.keys = keys
        self._skipped: set[str] = set()

    async def check(self, store: Store) -> None:
        """Stop at start (SealError, one line) unless every key held is the line's."""
        keys = self.keys if self.keys is not None else lines.LineKeys(self.line, [])
        current = await lines.check_keys(store, keys)
        extra = {"mf_line": self.line, "mf_keys": keys.fingerprints}
        if current.fingerprint not in keys.keys:
            log.warning(
                "this station does not hold line %s's current key %s: orders sealed to it "
                "go back to the line",
                self.line,
                current.fingerprint,
                extra=extra,
            )
        log.info("line keys checked", extra=extra)

    def skip(self, msg: ImageReady) -> bool:
        """Whether the image is another line's (logged once per order)."""
        if msg.line is None or msg.line == self.line:
            return False
        if msg.order_id not in self._skipped:
            self._skipped.add(msg.order_id)
            log.info(
                "order %s is sealed for line %s, not this station's line %s: skipped",
                msg.order_id,
                msg.line,
                self.line,
                extra={"order_id": msg.order_id},
            )
        return True

    def open(self, msg: ImageReady, name: str, data: bytes) -> bytes:
        """The plaintext of the image's object `name` (a ref name), or Unopenable."""
        ref = getattr(msg.objects, name)
        if msg.line is None:
            return data  # built before lines: plain
        if self.keys is None:
            raise Unopenable("this station holds no line key", key_not_held=True)
        try:
            return self.keys.open(data, ref, msg.order_id, msg.device_id, OBJECT_FILES[name])
        except lines.KeyNotHeld as exc:
            raise Unopenable(str(exc), key_not_held=True) from None
        except SealError as exc:
            raise Unopenable(str(exc), key_not_held=False) from None

    def left(self, msg: ImageReady, exc: Unopenable, max_requeues: int, failed: Emit) -> list[Emit]:
        """Nothing flashed, nothing recorded as final: one line, and the image back to the
        line when another station may hold its key."""
        back = exc.key_not_held and msg.requeues < max_requeues
        log.error(
            "device %s not flashed: sealed object does not open here: %s; %s",
            msg.device_id,
            exc,
            "image back to the line" if back else "image left for a station that can open it",
            extra={"order_id": msg.order_id, "device_id": msg.device_id},
        )
        if not back:
            return [failed]
        requeued = msg.model_copy(update={"requeues": msg.requeues + 1, "at": utcnow()})
        return [failed, Emit(IMAGES_READY, msg.device_id, requeued)]
