"""CPU that sealing adds per device: in the builder (seal) and at the station (open).

The builder seals the per-device objects a station flashes (`partition.bin`, plus
`esp_secure_cert.bin` and `nvs_keys.bin` when made) with `sealing.seal_device`, the exact
call it makes, and builds their refs (services/builder/service.py); the station opens each
with `lines.LineKeys.open` (header check, HPKE open, plaintext sha256), the exact call it
makes (services/station/sealed.py).
Two device shapes: factory-nvs (one 0x6000 partition) and secure-cert with XTS (partition,
a 1.2 KB esp_secure_cert.bin and a 4 KB nvs_keys.bin: three objects, the worst case). CPU time
(process_time) per device, the best of a few rounds on this shared host.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from matterfab import lines, sealing
from matterfab.messages.base import ObjectRef, Sealing

SHAPES = {
    "factory-nvs": {"partition.bin": 0x6000},
    "secure-cert+xts": {
        "partition.bin": 0x6000,
        "esp_secure_cert.bin": 1200,
        "nvs_keys.bin": 0x1000,
    },
}
ROUNDS = 5
TARGETS_MS = {"seal": 0.3, "open": 1.0}  # issue #20: builder <= 0.3 ms, station <= 1 ms a device


def _device(n: int, files: dict[str, int]) -> dict[str, bytes]:
    return {name: os.urandom(size) for name, size in files.items()}


def measure(devices: int = 500) -> dict[str, Any]:
    """Per-device CPU ms of sealing and of opening, per device shape."""
    key = sealing.generate()
    public = key.public_key()
    fp = sealing.fingerprint(public)
    secret = os.urandom(32)
    keys = lines.LineKeys("bench", [key])
    out: dict[str, Any] = {"devices": devices}
    for shape, files in SHAPES.items():
        plain = [_device(n, files) for n in range(devices)]
        best = {"seal": float("inf"), "open": float("inf")}
        for _ in range(ROUNDS):
            sealed: list[dict[str, tuple[bytes, ObjectRef]]] = []
            start = time.process_time()
            for n, objects in enumerate(plain):
                row = {}
                bindings = [
                    sealing.Binding("bench", fp, "B", f"B/{n:07d}", name) for name in objects
                ]
                blobs = sealing.seal_device(
                    list(zip(objects.values(), bindings, strict=True)), public, secret
                )
                for (name, data), blob in zip(objects.items(), blobs, strict=True):
                    digest = hashlib.sha256(data).hexdigest()
                    ref = ObjectRef(
                        key=name,
                        sha256=hashlib.sha256(blob).hexdigest(),
                        size=len(blob),
                        sealed=Sealing(line="bench", key=fp, sha256=digest, size=len(data)),
                    )
                    row[name] = (blob, ref)
                sealed.append(row)
            best["seal"] = min(best["seal"], time.process_time() - start)
            start = time.process_time()
            for n, row in enumerate(sealed):
                for name, (blob, ref) in row.items():
                    keys.open(blob, ref, "B", f"B/{n:07d}", name)
            best["open"] = min(best["open"], time.process_time() - start)
        out[shape] = {
            "objects_per_device": len(files),
            "seal_ms_per_device": round(best["seal"] * 1000 / devices, 3),
            "open_ms_per_device": round(best["open"] * 1000 / devices, 3),
        }
    worst = out["secure-cert+xts"]
    out["seal_ms_per_device_worst"] = worst["seal_ms_per_device"]
    out["open_ms_per_device_worst"] = worst["open_ms_per_device"]
    out["seal_ms_per_device_factory_nvs"] = out["factory-nvs"]["seal_ms_per_device"]
    out["open_ms_per_device_factory_nvs"] = out["factory-nvs"]["open_ms_per_device"]
    return out
