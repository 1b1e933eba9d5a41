"""`matterfab verify ORDER_ID`: re-check every artifact of an order.

Digests against the manifest, each partition against its label (verifier, codes), each DAC
against its PAI and the profile's PAA, and uniqueness of serials, DACs and unique IDs. The DAC
is looked for where the order's dac_storage puts it: the partition, esp_secure_cert.bin, or
nowhere (on-module: none may exist; device-key: none at build, and each DAC a station bound
is checked against the PAI and PAA, device_keys.py).

Lot objects (DESIGN §5 "Lots") are checked as objects too: each one the manifest points into
must parse, and its own index must put every piece exactly where the manifest's refs say
(offset, size, sha256); a swapped, truncated or rewritten lot is a reported problem. That check
reads each lot once, and the devices' pieces are read again through a RefReader (one more GET
per lot, about 0.02 per device at ~64 devices a lot), so memory holds a few lots at a time.

Sealed objects (DESIGN §9) are checked without the line's key too: their sha256 and their plain
header (line, key, order, device, file name) against the manifest. With the key (`--line-key`,
else the state folder's key of the order's line) they are opened, their plaintext checked
against the manifest's plaintext sha256, and audited like plain ones; without it their
contents are not audited, and the report says so.
"""

from __future__ import annotations

import asyncio
import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from matterfab import catalogue, config, device_keys, lines, lots
from matterfab.bucket import keys as bucket_keys
from matterfab.bucket import objects as bucket_objects
from matterfab.cli.failures import fail
from matterfab.errors import IntegrityError, MatterfabError
from matterfab.matter import audit
from matterfab.messages.base import ObjectRef
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.objectstore import Store
from matterfab.refs import RefReader, sealed_header_problem
from matterfab.s3 import ObjectStore
from matterfab.sealing import SealError

console = Console(stderr=True)
out = Console()


def _where(ref: dict[str, Any]) -> str:
    offset = ref.get("offset")
    return ref["key"] if offset is None else f"{ref['key']} bytes {offset}+{ref['size']}"


@dataclass(frozen=True)
class PieceRef:
    """A manifest ref into a lot object, with the device and file it stands for."""

    device_id: str
    index: int
    file: str  # the per-device file name, as the lot's index names the piece
    ref: dict[str, Any]


def refs_into_lots(rows: list[dict[str, Any]]) -> dict[str, list[PieceRef]]:
    """Every manifest ref into a lot object (one with an `offset`), by the lot's key."""
    found: dict[str, list[PieceRef]] = {}
    for row in rows:
        for name, ref in row["objects"].items():
            if ref.get("offset") is not None:
                piece = PieceRef(row["device_id"], int(row["index"]), OBJECT_FILES[name], ref)
                found.setdefault(ref["key"], []).append(piece)
    return found


def lot_problems(key: str, body: bytes, refs: list[PieceRef]) -> list[str]:
    """What is wrong with one lot object: it does not parse, a piece is damaged, or its index
    disagrees with the refs manifest.json gives into it (a swapped or rewritten lot)."""
    try:
        lot = lots.unpack(body, key)
    except IntegrityError as exc:
        return [str(exc)]
    problems: list[str] = []
    pieces: dict[tuple[int, str], lots.Entry] = {}
    for entry in lot.entries:
        if (entry.index, entry.name) in pieces:
            problems.append(f"{key}: its index lists {entry.name} of device {entry.index} twice")
        pieces[(entry.index, entry.name)] = entry
    pointed: set[tuple[int, str]] = set()
    for p in refs:
        device_id, index, file, ref = p.device_id, p.index, p.file, p.ref
        pointed.add((index, file))
        if (e := pieces.get((index, file))) is None:
            problems.append(
                f"{key}: holds no {file} of {device_id}, which manifest.json puts there"
            )
            continue
        if (e.offset, e.size, e.sha256) != (ref["offset"], ref["size"], ref["sha256"]):
            problems.append(
                f"{key}: {file} of {device_id} is bytes {e.offset}+{e.size} sha256 "
                f"{e.sha256[:16]}… in the lot, manifest.json says {ref['offset']}+{ref['size']} "
                f"sha256 {ref['sha256'][:16]}…"
            )
            continue
        try:
            lot.cut(e)
        except IntegrityError as exc:
            problems.append(f"{key}: {exc}")
    for index, file in sorted(set(pieces) - pointed):
        problems.append(
            f"{key}: holds {file} of device {index:07d}, which manifest.json does not list"
        )
    return problems


async def check_lots(store: Store, rows: list[dict[str, Any]]) -> list[str]:
    """Every lot object the manifest points into parses and agrees with it (one GET each)."""
    sem = asyncio.Semaphore(16)

    async def one(key: str, refs: list[PieceRef]) -> list[str]:
        async with sem:
            body = await store.get_or_none(key)
        if body is None:
            return [f"{key}: missing (manifest.json points {len(refs)} pieces into it)"]
        return await asyncio.to_thread(lot_problems, key, body, refs)

    found = await asyncio.gather(*(one(k, r) for k, r in sorted(refs_into_lots(rows).items())))
    return [p for ps in found for p in ps]


async def verify_order(
    order_id: str, show_progress: bool = True, line_keys: list[Path] | None = None
) -> list[str]:
    """Every problem found with an order's artifacts (empty: all sound)."""
    async with ObjectStore.open(config.load_s3_settings()) as store:
        await store.check()  # a missing bucket would read as "no manifest"
        return await _verify(store, order_id, show_progress, line_keys)


NOT_OPENED = "not opened"  # a problem that is a note: sealed contents not audited (no key)


async def _verify(
    store: ObjectStore, order_id: str, show_progress: bool, line_keys: list[Path] | None = None
) -> list[str]:
    """verify_order on an open store."""
    problems: list[str] = []
    held = await bucket_objects.manifest_doc(store, order_id)
    if held is None:
        return [f"order {order_id} has no manifest.json (not completed)"]
    doc = held[1]
    line = doc.get("line")
    keys = lines.LineKeys.load(line or "", line_keys or [], config.state_dir())
    unopened: list[str] = []
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
        problems.append(f"manifest has {len(rows)} devices, order quantity is {doc['quantity']}")
    csv_rows = list(csv.DictReader(io.StringIO(objects[bucket_keys.MANIFEST_CSV].decode())))
    if [r["device_id"] for r in csv_rows] != [r["device_id"] for r in rows]:
        problems.append("manifest.csv rows differ from manifest.json")
    names = set(zipfile.ZipFile(io.BytesIO(objects[bucket_keys.QRCODES_ZIP])).namelist())
    # A dynamic-passcode device has no code, so no label (onboarding.DYNAMIC in the manifest).
    if names != {f"{r['serial_num']}.png" for r in rows if r.get("qr_payload") != "dynamic"}:
        problems.append("qrcodes.zip does not hold exactly one <serial_num>.png per device")
    for field in ("serial_num", "dac_serial", "rd_id_uid", "device_id"):
        counts = Counter(r[field] for r in rows if r.get(field))
        dups = [v for v, n in counts.items() if n > 1]
        if dups:
            problems.append(f"{field} repeated within the order: {dups[:5]}")
    problems += await check_lots(store, rows)
    reader = RefReader(store)  # a device's pieces of lot objects: one GET per lot
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
            audit_it = True
            for name, ref in row["objects"].items():
                try:
                    blobs[name] = await reader.read(ref)
                except IntegrityError:
                    return [f"{_where(ref)}: sha256 differs from manifest.json"]
                except KeyError:
                    return [f"{ref['key']}: missing, though manifest.json lists it"]
                if ref.get("sealed") is None:
                    continue
                device_id, file = row["device_id"], OBJECT_FILES[name]
                why = sealed_header_problem(blobs[name], ref, order_id, device_id, file)
                if why is not None:
                    return [f"{device_id}: {file}: {why}"]
                if ref["sealed"]["key"] not in keys.keys:
                    unopened.append(device_id)  # digest and header checked; contents need the key
                    audit_it = False
                    continue
                try:
                    blobs[name] = keys.open(
                        blobs[name], ObjectRef.model_validate(ref), order_id, device_id, file
                    )
                except SealError as exc:
                    return [f"{device_id}: {exc}"]
            if not audit_it:
                progress.advance(task)
                return []
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
    if unopened:
        problems.append(
            f"{NOT_OPENED}: {len(set(unopened))} devices' sealed objects (line {line}): digest "
            "and header checked, contents not audited without the line's key (--line-key)"
        )
    if dac_storage == "device-key":
        pai_pem = summary.get("pai_pem") if summary else None
        pai = x509.load_pem_x509_certificate(pai_pem.encode()) if pai_pem else None
        problems += await _verify_bound_dacs(store, order_id, doc, pai, paa)
    return problems


async def _verify_bound_dacs(
    store: Store,
    order_id: str,
    doc: dict[str, Any],
    pai: x509.Certificate | None,
    paa: x509.Certificate | None,
) -> list[str]:
    """device-key orders: each DAC a station bound, against the PAI (and PAA); one per key."""
    problems = []
    ids = (int(doc["product"]["vendor_id"]), int(doc["product"]["product_id"]))
    keys: dict[bytes, str] = {}
    for bound in await device_keys.bound_dacs(store, order_id, len(doc["devices"])):
        problems += [
            f"{bound.device_id}: {p}" for p in device_keys.audit_bound(bound, pai, paa, *ids)
        ]
        if bound.der is not None:
            point = (
                x509.load_der_x509_certificate(bound.der)
                .public_key()
                .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            )
            if point in keys:
                problems.append(f"{bound.device_id}: DAC key also certified for {keys[point]}")
            keys.setdefault(point, bound.device_id)
    return problems


def verify(
    order_id: Annotated[str, typer.Argument(help="Order ID")],
    line_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--line-key",
            help="The order's line key (PEM), to audit sealed contents too (default: the "
            "state folder's key of the order's line)",
        ),
    ] = None,
) -> None:
    """Re-check every artifact of an order: digests, chains, verifiers, codes, uniqueness."""
    try:
        problems = asyncio.run(verify_order(order_id, line_keys=line_key))
    except MatterfabError as exc:
        raise fail(exc) from exc
    notes = [p for p in problems if p.startswith(NOT_OPENED)]
    problems = [p for p in problems if not p.startswith(NOT_OPENED)]
    for note in notes:
        out.print(f"[yellow]NOTE[/yellow] {note}")
    if problems:
        for p in problems[:200]:
            out.print(f"[red]FAIL[/red] {p}")
        out.print(f"{len(problems)} problem(s) in order {order_id}")
        raise typer.Exit(1)
    out.print(f"order {order_id}: every artifact verified")
