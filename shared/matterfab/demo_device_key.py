"""`make demo-device-key`: a device-key order end to end on the local stack, devices simulated.

Starts the stack and services (`matterfab up`), submits a 10-device `dac_storage: device-key`
order, runs a station whose `--csr-cmd` / `--cert-cmd` are the device simulator
(`python -m matterfab.devsim`, each device's key in its own folder), waits until every device is
bound, then fetches the order (`devices/<index>/dac.der`), verifies it, and checks each device's
DAC is over its own key. The stack keeps running; `make down` stops it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import config, devsim
from matterfab.bucket import keys as bucket_keys
from matterfab.bucket import objects as bucket_objects
from matterfab.demo import PROFILE, console, demo_order, matterfab
from matterfab.matter import csr
from matterfab.s3 import ObjectStore

QUANTITY = 10
TIMEOUT_S = 300


async def _bindings(order_id: str) -> list[dict[str, str]]:
    async with ObjectStore.open(config.load_s3_settings()) as store:
        raw = await bucket_objects.bindings_csv(store, order_id)
    return [] if raw is None else list(csv.DictReader(io.StringIO(raw.decode())))


def main() -> int:
    """Run the demo."""
    console.rule("matterfab device-key demo")
    matterfab("up")
    home = config.state_dir()
    if not (home / "profiles" / PROFILE).is_dir():
        matterfab("pki", "init-test", "--vid", "0xFFF1", "--pid", "0x8000", "--name", PROFILE)
    order_id = "DK-DEMO-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    order = {**demo_order(order_id), "quantity": QUANTITY, "dac_storage": "device-key"}
    order["commissioning"] = {"iteration_count": 1000, "discovery": ["ble"]}
    order_file = home / "orders" / f"{order_id}.json"
    order_file.parent.mkdir(parents=True, exist_ok=True)
    order_file.write_text(json.dumps(order, indent=2))
    console.print(f"1. work order {order_id}: {QUANTITY} devices, dac_storage device-key")
    matterfab("order", "submit", str(order_file), "--wait", "--timeout", "600")
    out = Path("demo-out") / order_id
    boards = out / "boards"  # each simulated device's own flash: its key never leaves it
    sim = f"{sys.executable} -m matterfab.devsim"
    console.print("2. a station: flash, CSR from the device, DAC from the signer, DAC written")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    station = subprocess.Popen(
        [sys.executable, "-m", "matterfab.cli.main", "station", "run",
         "--station-id", "demo-dk", "--line", "demo-dk", "--order", order_id,
         "--out", str(out / "flashed"), "--test-mac-prefix", "02:dd",
         "--csr-cmd", f"{sim} csr --state {boards} --device {{device_id}} --mac {{mac}}",
         "--cert-cmd", f"{sim} write --state {boards} --device {{device_id}} --dac {{dac}} "
         "--pai {pai} --secure-cert {secure_cert}"],
        stdout=subprocess.DEVNULL,
        stderr=open(home / "logs" / "demo-dk-station.log", "ab"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT_S
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            rows = asyncio.run(_bindings(order_id))
            if len(rows) >= QUANTITY:
                break
            time.sleep(1)
    finally:
        station.send_signal(signal.SIGTERM)
        station.wait(30)
    bound = [r for r in rows if r.get("dac_serial")]
    console.print(f"   {len(bound)} of {QUANTITY} devices bound with their DAC")
    matterfab("order", "fetch", order_id, "--out", str(out / "fetched"))
    matterfab("verify", order_id)
    own = 0
    for r in bound:
        folder = devsim.device_dir(boards, r["device_id"])
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        index = r["device_id"].rsplit("/", 1)[1]
        der = (out / "fetched" / "devices" / index / "dac.der").read_bytes()
        own += csr.dac_over_key(der, csr.public_key_raw(key.public_key()))
    console.print(f"3. {own} of {len(bound)} fetched DACs are over their device's own key")
    console.print(f"bindings: s3 {bucket_keys.bindings_csv(order_id)} · boards: {boards}")
    return 0 if own == QUANTITY else 1


if __name__ == "__main__":
    sys.exit(main())
