"""`make run`: the whole system on this machine, from nothing to a finished order.

Starts the local stack and every service (`matterfab up`), makes a throwaway test PKI
(`matterfab pki init-test`), submits a 200-device work order, follows it, fetches and
verifies the result and says where everything is. The stack keeps running for
exploration; `make down` stops it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from matterfab import config, profiles
from matterfab.bucket import keys as bucket_keys

PROFILE = "demo-fff1"
QUANTITY = 200
console = Console()


def matterfab(*args: str, check: bool = True) -> int:
    """Run a `matterfab` command in this interpreter's environment, output shown."""
    code = subprocess.call([sys.executable, "-m", "matterfab.cli.main", *args])
    if check and code != 0:
        console.print(f"[red]`matterfab {' '.join(args)}` failed with exit code {code}[/red]")
        sys.exit(code)
    return code


def demo_order(order_id: str) -> dict[str, object]:
    """A demo work order like an ERP would send (see ../shared/examples/work-order.json)."""
    return {
        "type": "work-order/v1",
        "order_id": order_id,
        "product": {
            "vendor_id": 0xFFF1,
            "product_id": 0x8000,
            "vendor_name": "matterfab demo",
            "product_name": "Demo Bulb",
            "hardware_version": 1,
            "hardware_version_string": "v1.0",
            "product_finish": "matte",
            "product_color": "white",
        },
        "quantity": QUANTITY,
        "mfg_date": datetime.now(UTC).date().isoformat(),
        "attestation_profile": PROFILE,
        "commissioning": {
            "iteration_count": 10000,
            "discovery": ["ble"],
            "rotating_device_id": True,
        },
        "partition": {"size": 0x6000, "encryption": "none"},
    }


def main() -> int:
    """Run the demo."""
    console.rule("matterfab demo")
    console.print("1. starting the local stack (broker, S3) and every service")
    matterfab("up")
    home = config.state_dir()
    console.print("2. attestation profile (throwaway test PAA, PAI and CD)")
    if not (profiles.profiles_dir() / PROFILE).is_dir():
        matterfab("pki", "init-test", "--vid", "0xFFF1", "--pid", "0x8000", "--name", PROFILE)
    else:
        console.print(f"   profile {PROFILE} exists")
    order_id = "DEMO-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    order_file = home / "orders" / f"{order_id}.json"
    order_file.parent.mkdir(parents=True, exist_ok=True)
    order_file.write_text(json.dumps(demo_order(order_id), indent=2))
    console.print(f"3. submitting work order {order_id} ({QUANTITY} devices) and following it")
    matterfab("order", "submit", str(order_file), "--wait", "--timeout", "900")
    matterfab("order", "status", order_id)
    out = Path("demo-out") / order_id
    console.print("4. fetching the manifest and every device's objects (sha256-checked)")
    matterfab("order", "fetch", order_id, "--out", str(out))
    # The secrets were sealed to line `local`, whose key `up` keeps in the state folder:
    # fetch wrote them opened, and verify audits them too (docs/secrets.md).
    console.print("5. verifying every artifact (digests, chains, verifiers, codes)")
    matterfab("verify", order_id)
    s3 = config.load_s3_settings()
    console.rule("where things are")
    csv_file = out / bucket_keys.MANIFEST_CSV
    console.print(f"manifest:      {csv_file}  (and manifest.json, qrcodes.zip)")
    console.print(f"device images: {out / 'devices'}/<index>/partition.bin, qrcode.png, …")
    console.print(f"in S3:         {s3.endpoint}/{s3.bucket}/{bucket_keys.order_prefix(order_id)}")
    console.print(f"work order:    {order_file}")
    console.print(f"logs:          {home / 'logs'}")
    console.print(f"line keys:     {home / 'lines'} (line local; `matterfab line list`)")
    console.print("next:          make down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
