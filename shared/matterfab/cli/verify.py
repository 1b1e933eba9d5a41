"""`matterfab verify ORDER_ID`: re-check every artifact of an order.

Digests against the manifest, each partition against its label (verifier, codes), each DAC
against its PAI and the profile's PAA, and uniqueness of serials, DACs and unique IDs. The DAC
is looked for where the order's dac_storage puts it: the partition, esp_secure_cert.bin, or
nowhere (on-module: none may exist).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections import Counter
from typing import Annotated, Any

import typer
from cryptography import x509
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from matterfab import catalogue, config
from matterfab.cli.failures import fail
from matterfab.errors import MatterfabError
from matterfab.matter import audit
from matterfab.s3 import ObjectStore

console = Console(stderr=True)
out = Console()


async def verify_order(order_id: str, show_progress: bool = True) -> list[str]:
    """Every problem found with an order's artifacts (empty: all sound)."""
    problems: list[str] = []
    async with ObjectStore.open(config.load_s3_settings()) as store:
        await store.check()  # a missing bucket would read as "no manifest"
        raw = await store.get_or_none(f"orders/{order_id}/manifest.json")
        if raw is None:
            return [f"order {order_id} has no manifest.json (not completed)"]
        doc = json.loads(raw)
        dac_storage = doc.get("dac_storage", "factory-nvs")
        summary = await catalogue.Catalogue(store).get(doc["attestation_profile"])
        paa_pem = summary.get("paa_pem") if summary else None
        paa = x509.load_pem_x509_certificate(paa_pem.encode()) if paa_pem else None
        if paa is None and dac_storage != "on-module":  # on-module: no DAC to chain
            problems.append(f"profile {doc['attestation_profile']}: no PAA in the catalogue")
        objects = {}
        for name, ref in doc["objects"].items():
            data = await store.get(ref["key"])
            if audit.sha256_hex(data) != ref["sha256"]:
                problems.append(f"{ref['key']}: sha256 differs from manifest.json")
            objects[name] = data
        rows = doc["devices"]
        if len(rows) != doc["quantity"]:
            problems.append(
                f"manifest has {len(rows)} devices, order quantity is {doc['quantity']}"
            )
        csv_rows = list(csv.DictReader(io.StringIO(objects["manifest.csv"].decode())))
        if [r["device_id"] for r in csv_rows] != [r["device_id"] for r in rows]:
            problems.append("manifest.csv rows differ from manifest.json")
        names = set(zipfile.ZipFile(io.BytesIO(objects["qrcodes.zip"])).namelist())
        if names != {f"{r['serial_num']}.png" for r in rows}:
            problems.append("qrcodes.zip does not hold exactly one <serial_num>.png per device")
        for field in ("serial_num", "dac_serial", "rd_id_uid", "device_id"):
            counts = Counter(r[field] for r in rows if r.get(field))
            dups = [v for v, n in counts.items() if n > 1]
            if dups:
                problems.append(f"{field} repeated within the order: {dups[:5]}")
        sem = asyncio.Semaphore(16)
        progress = Progress(
            TextColumn("verifying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            disable=not show_progress,
        )

        async def device(row: dict[str, Any]) -> list[str]:
            async with sem:
                blobs = {}
                for name, ref in row["objects"].items():
                    data = await store.get(ref["key"])
                    if audit.sha256_hex(data) != ref["sha256"]:
                        return [f"{ref['key']}: sha256 differs from manifest.json"]
                    blobs[name] = data
                found = await asyncio.to_thread(
                    audit.audit_device,
                    row,
                    blobs["partition"],
                    blobs.get("dac"),
                    nvs_keys=blobs.get("nvs_keys"),
                    paa=paa,
                    secure_cert_image=blobs.get("secure_cert"),
                    dac_storage=dac_storage,
                )
                progress.advance(task)
                return [f"{row['device_id']}: {p}" for p in found]

        with progress:
            task = progress.add_task("verify", total=len(rows))
            for found in await asyncio.gather(*(device(r) for r in rows)):
                problems += found
    return problems


def verify(order_id: Annotated[str, typer.Argument(help="Order ID")]) -> None:
    """Re-check every artifact of an order: digests, chains, verifiers, codes, uniqueness."""
    try:
        problems = asyncio.run(verify_order(order_id))
    except MatterfabError as exc:
        raise fail(exc) from exc
    if problems:
        for p in problems[:200]:
            out.print(f"[red]FAIL[/red] {p}")
        out.print(f"{len(problems)} problem(s) in order {order_id}")
        raise typer.Exit(1)
    out.print(f"order {order_id}: every artifact verified")
