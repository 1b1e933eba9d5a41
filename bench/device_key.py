"""CSR → DAC round trip of `dac_storage: device-key` with 20 stations at once (issue #21).

On the bench's local stack, with the pipeline services running (one instance each), a
device-key order is submitted and built; then `stations` station clients, each with its own
Kafka producer and reply reader (`station.device_key.DacExchange`, the code a station runs),
send `per_station` CSRs one after another, all stations at once. A round trip is from the send
of the request to the reply in hand; the device's key and CSR are made before the clock starts
(they are the chip's work). Reported: p50, p99 and max in ms, and requests per second.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench.pipeline import Bench, submit_and_wait
from matterfab.devsim import make_csr
from matterfab.messages.dac_requests import DacRequest
from matterfab.runtime import Publisher
from matterfab.services.station.device_key import DacExchange

TARGET_P99_MS = 500.0
TIMEOUT_S = 15.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


async def _station(
    bench: Bench, order_id: str, station: int, indexes: list[int]
) -> tuple[list[float], list[str], list[float]]:
    settings = bench.kafka
    publisher = Publisher(f"bench-station-{station}", settings)
    await publisher.start()
    exchange = DacExchange(settings, publisher.send, f"bench-st-{station:02d}")
    await exchange.start()
    times: list[float] = []
    refused: list[str] = []
    outbound: list[float] = []  # request made -> reply made by the signer (same clock)
    try:
        for index in indexes:
            pem = make_csr(ec.generate_private_key(ec.SECP256R1()), "bench")  # the chip's part
            req = DacRequest(
                request_id=uuid.uuid4().hex,
                order_id=order_id,
                device_id=f"{order_id}/{index:07d}",
                index=index,
                serial_num=str(index),
                station_id=f"bench-st-{station:02d}",
                line="bench",
                csr_pem=pem,
            )
            started = time.perf_counter()
            req = req.model_copy(update={"at": datetime.now(UTC)})
            reply = await exchange.request(req, TIMEOUT_S)
            times.append(1000 * (time.perf_counter() - started))
            outbound.append(1000 * (reply.at - req.at).total_seconds())
            if reply.status != "issued":
                refused.append(reply.reason)
    finally:
        await exchange.stop()
        await publisher.stop()
    return times, refused, outbound


async def _round_trips(
    bench: Bench, order_id: str, stations: int, per_station: int
) -> dict[str, Any]:
    plan = [list(range(s * per_station, (s + 1) * per_station)) for s in range(stations)]
    started = time.perf_counter()
    done = await asyncio.gather(*(_station(bench, order_id, s, ix) for s, ix in enumerate(plan)))
    wall = time.perf_counter() - started
    times = [t for ts, _, _ in done for t in ts]
    refused = [r for _, rs, _ in done for r in rs]
    outbound = [t for _, _, ts in done for t in ts]
    return {
        "stations": stations,
        "requests": len(times),
        "refused": len(refused),
        "refusals": refused[:3],
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(_percentile(times, 0.99), 1),
        "max_ms": round(max(times), 1),
        # Of which: from the request's send to the signer's reply made (Kafka in, S3 claims,
        # signing); the rest is the reply's way back to the station.
        "to_signer_reply_p50_ms": round(statistics.median(outbound), 1),
        "to_signer_reply_p99_ms": round(_percentile(outbound, 0.99), 1),
        "requests_per_s": round(len(times) / wall, 1),
        "target_p99_ms": TARGET_P99_MS,
        "met": _percentile(times, 0.99) < TARGET_P99_MS,
    }


def measure(bench: Bench, stations: int = 20, per_station: int = 10) -> dict[str, Any]:
    """The round trip with `stations` stations at once, each bringing `per_station` devices."""
    instances = {"allocator": 1, "signer": 1, "builder": 1, "assembler": 1}
    with bench.running(instances):
        order = bench.order(stations * per_station + 1, 1000)
        order["dac_storage"] = "device-key"
        result = asyncio.run(submit_and_wait(bench.kafka, order, 600))
        if result.get("status") != "completed":
            raise RuntimeError(f"device-key order not completed: {result}")
        return asyncio.run(_measured(bench, order["order_id"], stations, per_station))


async def _measured(bench: Bench, order_id: str, stations: int, per_station: int) -> dict[str, Any]:
    # One request first warms the signer (profile, clients): its last device, not measured.
    await _station(bench, order_id, 99, [stations * per_station])
    return await _round_trips(bench, order_id, stations, per_station)
