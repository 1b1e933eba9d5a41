"""`device find` at fleet scale: lookups by every key with 100,000 indexed devices.

A LocalStack of its own (real S3 server) is filled directly, as the assembler and stations
would fill it: per device its pointers (serial, QR payload, DAC serial: `fleet.index.
pointers_of`) and its MAC claim, and for one device in FULL_EVERY also its generation-0
image record and station outcome; orders of 10,000 devices. Then random devices are looked
up by serial, MAC, DAC serial, device_id and QR payload through the library (`resolve` +
`device_view`, what the command runs; the command's own start-up is measured apart), and a few
times through the `matterfab device find` command (a new process: interpreter start-up and
imports included). Target (issue #22): ≤ 1 s per lookup at 100,000 devices.

`python -m bench.find [--devices 100000] [--lookups 40] [--out bench/out/find.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from matterfab.fleet import index, keys
from matterfab.fleet.records import DeviceImage
from matterfab.matter import payload
from matterfab.messages import StationResult
from matterfab.messages.base import device_id, order_key
from matterfab.messages.station import station_record_key
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack, StackPorts

VID, PID = 0xFFF1, 0x8000
ORDER_SIZE = 10_000
CONCURRENCY = 64
# Every device gets its pointers (serial, QR, DAC serial, MAC: the folders that grow with the
# fleet); one in FULL_EVERY also gets its image record and station outcome, and only those are
# looked up. Writing all six objects for 100,000 devices took ~50 minutes on this shared host.
FULL_EVERY = 50
OUT = Path(__file__).parent / "out" / "find.json"


def device(order_id: str, i: int, n: int) -> tuple[DeviceImage, StationResult]:
    """Device `i` of an order (`n`: its number in the whole fleet, for unique values)."""
    p = payload.SetupPayload(
        vendor_id=VID,
        product_id=PID,
        flow=payload.CommissioningFlow.STANDARD,
        discovery=payload.Discovery.BLE,
        discriminator=n % 4096,
        passcode=10_000_000 + n,
    )
    dev = device_id(order_id, i)
    image = DeviceImage(
        device_id=dev,
        order_id=order_id,
        index=i,
        generation=0,
        serial_num=f"{VID:04X}{PID:04X}{n:08d}",
        vendor_id=VID,
        product_id=PID,
        discriminator=n % 4096,
        qr_payload=payload.encode_qr(p),
        manual_code=payload.encode_manual(p),
        dac_serial=f"{0x40 << 152 | n:040x}",
    )
    mac = ":".join(f"{b:02x}" for b in (0x02, 0xF1, *(n.to_bytes(4, "big"))))
    result = StationResult(
        order_id=order_id,
        device_id=dev,
        index=i,
        serial_num=image.serial_num,
        station_id="bench-station",
        line="bench",
        status="flashed",
        mac=mac,
    )
    return image, result


async def populate(store: ObjectStore, devices: int) -> float:
    """Write the fleet; seconds it took."""
    sem = asyncio.Semaphore(CONCURRENCY)
    start = time.perf_counter()

    async def one(order_id: str, i: int, n: int) -> None:
        image, result = device(order_id, i, n)
        async with sem:
            await index.record_image(store, image)
            await store.put_if_absent(
                station_record_key(order_id, i), result.model_dump_json().encode()
            )
            claim = json.dumps({"mac": result.mac, "device_id": result.device_id})
            await store.put_if_absent(keys.mac_key(result.mac or ""), claim.encode())

    for first in range(0, devices, ORDER_SIZE):
        order_id = f"BENCH-FIND-{first // ORDER_SIZE:03d}"
        size = min(ORDER_SIZE, devices - first)
        order = {"order_id": order_id, "quantity": size, "attestation_profile": "bench"}
        await store.put_if_absent(order_key(order_id, "order.json"), json.dumps(order).encode())
        await asyncio.gather(*(one(order_id, i, first + i) for i in range(size)))
        done = first + size
        rate = done / (time.perf_counter() - start)
        print(f"  {done} devices indexed ({rate:.0f}/s)", flush=True)
    return time.perf_counter() - start


def keys_of(image: DeviceImage, result: StationResult) -> dict[str, str]:
    """Every key `device find` takes, for one device."""
    return {
        "serial": image.serial_num,
        "mac": result.mac or "",
        "dac_serial": image.dac_serial,
        "device_id": image.device_id,
        "qr": image.qr_payload,
    }


async def lookups(
    store: ObjectStore, sample: list[tuple[int, int]], devices: int
) -> dict[str, Any]:
    """Library lookups per key kind: ms for each, checked to find the right device."""
    times: dict[str, list[float]] = {}
    for n, _ in sample:
        order_id, i = f"BENCH-FIND-{n // ORDER_SIZE:03d}", n % ORDER_SIZE
        image, result = device(order_id, i, n)
        for kind, value in keys_of(image, result).items():
            t0 = time.perf_counter()
            if kind == "serial":
                (found,) = await index.resolve_serial(store, value)
            else:
                found = await index.resolve(store, kind, value)
            view = await index.device_view(store, found)
            times.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
            assert view.device_id == image.device_id and view.state == "bound", (kind, view)
    return {
        kind: {
            "n": len(ms),
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(sorted(ms)[max(0, int(len(ms) * 0.95) - 1)], 1),
            "max_ms": round(max(ms), 1),
        }
        for kind, ms in times.items()
    }


def cli_lookups(stack: LocalStack, sample: list[tuple[int, int]]) -> dict[str, Any]:
    """`matterfab device find` as a new process, wall time (start-up included)."""
    env = dict(os.environ, MATTERFAB_HOME=str(stack.home))
    out: dict[str, list[float]] = {}
    for n, _ in sample:
        image, result = device(f"BENCH-FIND-{n // ORDER_SIZE:03d}", n % ORDER_SIZE, n)
        for kind, value in keys_of(image, result).items():
            option = "--" + kind.replace("_", "-")
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "matterfab.cli.main", "device", "find", option, value,
                 "--json"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            out.setdefault(kind, []).append(round(time.perf_counter() - t0, 3))
            assert done.returncode == 0 and image.device_id in done.stdout, done.stderr
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "matterfab.cli.main", "--help"], env=env,
                   capture_output=True, check=True)  # fmt: skip
    return {"wall_s": out, "startup_only_s": round(time.perf_counter() - t0, 3)}


def full(rng: random.Random, devices: int) -> int:
    """A random device with every record."""
    return rng.randrange(0, devices, FULL_EVERY)


def main(argv: list[str] | None = None) -> None:
    """Run the bench and write its numbers."""
    p = argparse.ArgumentParser(prog="python -m bench.find", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=40, help="random devices looked up per key")
    p.add_argument("--cli", type=int, default=3, help="devices looked up through the command")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    rng = random.Random(22)
    with tempfile.TemporaryDirectory(prefix="bench-find-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", ports=StackPorts.free())
        stack.start()
        try:

            async def run() -> dict[str, Any]:
                async with ObjectStore.open(stack.s3_settings()) as store:
                    seconds = await populate(store, args.devices)
                    sample = [(full(rng, args.devices), 0) for _ in range(args.lookups)]
                    return {
                        "devices": args.devices,
                        "objects_per_device": 4,
                        "full_records_every": FULL_EVERY,
                        "populate_s": round(seconds, 1),
                        "library": await lookups(store, sample, args.devices),
                    }

            results = asyncio.run(run())
            sample = [(full(rng, args.devices), 0) for _ in range(args.cli)]
            results["command"] = cli_lookups(stack, sample)
        finally:
            stack.stop()
    results["loadavg"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
