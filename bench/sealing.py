"""CPU that sealing adds per device: in the builder (seal) and at the station (open).

Builder: the per-device objects a station flashes (`partition.bin`, plus `esp_secure_cert.bin`
and `nvs_keys.bin` when made) go through the builder's exact path — `seal_lot`
(services/builder/service.py: a lot of LOT devices under one encapsulation, 0xFF runs elided,
issue #26) — against
what it did before sealing: the plaintext's ref (one sha256). Station: `lines.LineKeys.open`
(header check, HPKE open, decode, plaintext sha256) plus the sealed object's digest check
(services/station/service.py), against what it did before: the object's digest check. The
difference is what sealing adds. Two device shapes: factory-nvs (one 0x6000 partition) and
secure-cert with XTS (partition, a 1.2 KB esp_secure_cert.bin and a 4 KB nvs_keys.bin: three
objects, the worst case). The images are
shaped like the real ones (`_flash`): a partition is ~2.4 KB of data in runs between erased
(0xFF) flash, a keys partition 68 bytes then 0xFF, a secure-cert image data only. CPU time
(process_time) per device, the best of a few rounds on this shared host; and the sealed bytes
a device adds to images.lot.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from matterfab import lines, sealing
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.services.builder.service import seal_lot

REF_NAMES = {file: name for name, file in OBJECT_FILES.items()}
LOT = 64  # devices a lot (the allocator's default at 10,000 iterations)

# (size, data bytes): data in 13 stretches between 0xFF runs, as a built image has them.
SHAPES = {
    "factory-nvs": {"partition.bin": (0x6000, 2400)},
    "secure-cert+xts": {
        "partition.bin": (0x6000, 2600),
        "esp_secure_cert.bin": (1200, 1200),
        "nvs_keys.bin": (0x1000, 68),
    },
}
ROUNDS = 7
TARGETS_MS = {"seal": 0.3, "open": 1.0}  # issue #20: builder <= 0.3 ms, station <= 1 ms a device


def _best_ms(work: Callable[[], Any], devices: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best * 1000 / devices


def measure(devices: int = 500) -> dict[str, Any]:
    """Per-device CPU ms that sealing adds in the builder and at the station, per shape."""
    key = sealing.generate()
    public = key.public_key()
    secret = os.urandom(32)
    keys = lines.LineKeys("bench", [key])
    entry = lines.LineKey("bench", 1, sealing.fingerprint(public), "", "")
    out: dict[str, Any] = {"devices": devices}
    for shape, files in SHAPES.items():
        out[shape] = _shape(files, devices, public, secret, keys, entry)
    # The machine's speed at the time, to scale the above by: sealing is two X25519 operations
    # a lot, opening one an object.
    other = sealing.generate().public_key()
    out["x25519_exchange_ms"] = round(
        _best_ms(lambda: [key.exchange(other) for _ in range(200)], 200), 4
    )
    worst = out["secure-cert+xts"]
    out["seal_ms_per_device_worst"] = worst["seal_ms_per_device"]
    out["open_ms_per_device_worst"] = worst["open_ms_per_device"]
    return out


def _flash(size: int, data: int) -> bytes:
    """`size` bytes of which `data` are random, in up to 13 stretches; the rest erased (0xFF)."""
    stretches = min(13, data)
    if stretches == 0 or data == size:
        return os.urandom(data) + b"\xff" * (size - data)
    gap = (size - data) // stretches
    out = b"".join(os.urandom(data // stretches) + b"\xff" * gap for _ in range(stretches))
    return out + os.urandom(size - len(out))


def _shape(
    files: dict[str, tuple[int, int]],
    devices: int,
    public: Any,
    secret: bytes,
    keys: lines.LineKeys,
    entry: lines.LineKey,
) -> dict[str, Any]:
    """One device shape's added CPU ms per device, sealing and opening."""
    plain = [{n: _flash(*shape) for n, shape in files.items()} for _ in range(devices)]
    sealed: list[list[tuple[str, bytes, Any]]] = []

    def binding(n: int, name: str) -> sealing.Binding:
        return sealing.Binding("bench", entry.fingerprint, "B", f"B/{n:07d}", name)

    def build_before() -> None:
        for objects in plain:
            for data in objects.values():
                hashlib.sha256(data).hexdigest()  # the plaintext's ref

    def build_sealed() -> None:
        sealed.clear()
        for first in range(0, devices, LOT):
            lot = [
                (f"B/{n:07d}", {REF_NAMES[file]: data for file, data in plain[n].items()})
                for n in range(first, min(first + LOT, devices))
            ]
            for pieces in seal_lot(lot, "images.lot", entry, public, secret):
                row = [(OBJECT_FILES[name], blob, ref) for name, (blob, ref) in pieces.items()]
                sealed.append(row)

    def open_before() -> None:
        for row in sealed:
            for _, blob, _ in row:
                hashlib.sha256(blob).hexdigest()  # the downloaded object's digest check

    def open_sealed() -> None:
        for n, row in enumerate(sealed):
            for name, blob, ref in row:
                keys.open(blob, ref, "B", f"B/{n:07d}", name)
                hashlib.sha256(blob).hexdigest()

    seal_ms = _best_ms(build_sealed, devices) - _best_ms(build_before, devices)
    open_ms = _best_ms(open_sealed, devices) - _best_ms(open_before, devices)
    sealed_bytes = sum(len(blob) for row in sealed for _, blob, _ in row)
    return {
        "objects_per_device": len(files),
        "plain_bytes_per_device": sum(size for size, _ in files.values()),
        "sealed_bytes_per_device": round(sealed_bytes / devices),
        "seal_ms_per_device": round(seal_ms, 3),
        "open_ms_per_device": round(open_ms, 3),
    }
