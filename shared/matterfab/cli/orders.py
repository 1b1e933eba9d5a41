"""`matterfab order submit|status|fetch`: the ERP's and the operator's view of orders.

Exit codes scripts rely on (DESIGN §8): `submit --wait` exits 0 once the order is completed,
2 if it is rejected (errors printed), 1 on any other failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from matterfab import config, device_keys, kafka, lines
from matterfab.bucket import keys as bucket_keys
from matterfab.bucket import objects as bucket_objects
from matterfab.cli.failures import fail
from matterfab.cli.labels import labels as labels_command
from matterfab.errors import IntegrityError, MatterfabError
from matterfab.matter import nvs
from matterfab.messages import ORDER_EVENTS, WORK_ORDERS, OrderEvent
from matterfab.messages.base import ObjectRef
from matterfab.messages.codec import MAX_MESSAGE_BYTES
from matterfab.messages.onboarding import OBJECT_FILES
from matterfab.objectstore import Store
from matterfab.refs import RefReader
from matterfab.s3 import ObjectStore
from matterfab.sealing import SEALED_SUFFIX, SealError

app = typer.Typer(
    help="Submit work orders, follow them, fetch their artifacts.", no_args_is_help=True
)
app.command("labels")(labels_command)  # `order labels`: cli/labels.py
console = Console(stderr=True)
out = Console()

EXIT_OK, EXIT_FAILED, EXIT_REJECTED = 0, 1, 2
INDEX_RE = re.compile(r"[0-9]{7}")  # a manifest's device index names a folder: nothing else


async def _events_consumer(settings: config.KafkaSettings, from_end: bool) -> Any:
    """A group-less reader of every partition of the order-events topic."""
    return await kafka.topic_reader(settings, ORDER_EVENTS, "end" if from_end else "beginning")


async def submit_order(raw: bytes, order_id: str, wait: bool, timeout: float) -> int:
    """Publish a work order; with `wait`, follow its events to the end."""
    settings = config.load_kafka_settings()
    cons = await _events_consumer(settings, from_end=True) if wait else None
    try:
        prod = kafka.producer(settings)
        await kafka.start(prod, settings, f"publishing to {WORK_ORDERS}")
        try:
            try:  # a topic the cluster lacks would hold the send for request_timeout_ms
                async with asyncio.timeout(settings.connect_timeout_s):
                    await prod.partitions_for(WORK_ORDERS)
            except Exception as exc:
                raise kafka.missing_topic(settings, WORK_ORDERS) from exc
            await prod.send_and_wait(WORK_ORDERS, raw, key=order_id.encode())
        finally:
            await prod.stop()
        console.print(f"submitted order [bold]{order_id}[/bold] to {WORK_ORDERS}")
        if cons is None:
            return EXIT_OK
        return await _follow(cons, order_id, timeout)
    finally:
        if cons is not None:
            await kafka.stop_reader(cons)


async def _follow(cons: Any, order_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{order_id} waiting", total=None)
        while time.monotonic() < deadline:
            batch = await cons.getmany(timeout_ms=500)
            for recs in batch.values():
                for rec in recs:
                    if rec.key is None or rec.key.decode() != order_id:
                        continue
                    try:
                        ev = OrderEvent.model_validate_json(rec.value)
                    except ValueError:
                        continue
                    if ev.status == "accepted":
                        progress.update(task, description=f"{order_id} building", total=ev.quantity)
                    elif ev.status == "progress":
                        progress.update(task, total=ev.quantity, completed=ev.ready)
                    elif ev.status == "completed":
                        progress.update(
                            task,
                            description=f"{order_id} completed",
                            total=ev.quantity,
                            completed=ev.quantity,
                        )
                        progress.stop()
                        where = ev.manifest.key if ev.manifest else "?"
                        out.print(f"completed: {ev.quantity} devices; manifest {where}")
                        if ev.manifest:
                            out.print(f"manifest sha256 {ev.manifest.sha256}")
                        return EXIT_OK
                    elif ev.status == "rejected":
                        progress.stop()
                        console.print(f"[red]order {order_id} rejected[/red]")
                        for e in ev.errors:
                            console.print(f"  {e.field}: {e.message}")
                        return EXIT_REJECTED
                    elif ev.status == "failed":
                        progress.stop()
                        console.print(f"[red]order {order_id} failed[/red]")
                        for e in ev.errors:
                            console.print(f"  {e.field}: {e.message}")
                        return EXIT_FAILED
    console.print(f"[red]timed out after {timeout:.0f}s waiting for {order_id}[/red]")
    return EXIT_FAILED


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Work order JSON file", exists=True, dir_okay=False)],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the order until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 3600.0,
) -> None:
    """Publish a work order to mfg.work-orders."""
    raw = file.read_bytes()
    if len(raw) > MAX_MESSAGE_BYTES:
        console.print(f"error: $: work order is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
        raise typer.Exit(EXIT_REJECTED)
    try:
        data = json.loads(raw)
        order_id = data["order_id"]
        if not isinstance(order_id, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        console.print("error: the file must be a JSON work order with a string order_id")
        raise typer.Exit(EXIT_REJECTED) from None
    try:
        code = asyncio.run(submit_order(raw, order_id, wait, timeout))
    except MatterfabError as exc:
        raise fail(exc, EXIT_FAILED) from exc
    raise typer.Exit(code)


async def order_events(order_id: str) -> list[OrderEvent]:
    """Every event of an order still retained by the broker, oldest first."""
    settings = config.load_kafka_settings()
    cons = await _events_consumer(settings, from_end=False)
    try:
        tps = list(cons.assignment())
        ends = await cons.end_offsets(tps)
        events = []
        while any(pos < ends[tp] for tp, pos in [(tp, await cons.position(tp)) for tp in tps]):
            batch = await cons.getmany(timeout_ms=1000)
            for recs in batch.values():
                for rec in recs:
                    if rec.key and rec.key.decode() == order_id:
                        try:
                            events.append(OrderEvent.model_validate_json(rec.value))
                        except ValueError:
                            continue
        return events
    finally:
        await kafka.stop_reader(cons)


@app.command()
def status(order_id: Annotated[str, typer.Argument(help="Order ID")]) -> None:
    """Show an order's state from its events."""
    events = asyncio.run(order_events(order_id))
    if not events:
        console.print(f"no events for order {order_id}")
        raise typer.Exit(EXIT_FAILED)
    last = events[-1]
    final = next(
        (e for e in reversed(events) if e.status in ("completed", "rejected", "failed")), None
    )
    ready = max((e.ready for e in events), default=0)
    quantity = max((e.quantity for e in events), default=0)
    table = Table(title=f"order {order_id}")
    for col in ("status", "ready", "quantity", "flashed", "updated", "manifest"):
        table.add_column(col)
    shown = final or last
    table.add_row(
        shown.status,
        str(ready),
        str(quantity),
        str(max(e.flashed for e in events)),
        last.at.isoformat(timespec="seconds"),
        shown.manifest.key if shown.manifest else "",
    )
    out.print(table)
    if shown.errors:
        for e in shown.errors:
            out.print(f"  {e.field}: {e.message}")
    raise typer.Exit(EXIT_REJECTED if shown.status == "rejected" else EXIT_OK)


def _check_dac_storage(doc: dict[str, Any]) -> None:
    """Each device's objects fit the order's dac_storage: a dac.der unless on-module, an
    esp_secure_cert.bin exactly in secure-cert orders (else the fetched folder would mislead)."""
    mode = doc.get("dac_storage", "factory-nvs")
    for row in doc["devices"]:
        objects = row["objects"]
        if ("dac" in objects) != (mode not in nvs.NO_DAC_AT_BUILD) or (
            "secure_cert" in objects
        ) != (mode == "secure-cert"):
            raise MatterfabError(
                f"{row['device_id']}: manifest lists {', '.join(sorted(objects))}, which does "
                f"not fit dac_storage {mode}"
            )


@dataclass(frozen=True)
class FetchJob:
    """One file `order fetch` writes: its ref, where, what to call it, and for a device's
    file, the device (a sealed object is opened for that device and file name only)."""

    ref: dict[str, Any]
    path: Path
    what: str
    device_id: str | None = None


def _fetch_jobs(doc: dict[str, Any], dest: Path) -> list[FetchJob]:
    """Every object the manifest lists, as a FetchJob.

    A device's file is named after its ref (`OBJECT_FILES`), not after the object's key: a
    piece of a lot object is written under the per-device name it stands for (DESIGN §8).
    """
    jobs = [FetchJob(ref, dest / name, name) for name, ref in doc["objects"].items()]
    for row in doc["devices"]:
        index = str(row["index"])
        if not INDEX_RE.fullmatch(index):
            raise MatterfabError(f"manifest.json: device index {index!r} is not 7 digits")
        for name, ref in row["objects"].items():
            file = OBJECT_FILES.get(name)
            if file is None:
                raise MatterfabError(
                    f"{row['device_id']}: manifest.json lists an object {name!r} that this "
                    "matterfab has no file name for (upgrade it)"
                )
            path = dest / "devices" / index / file
            jobs.append(FetchJob(ref, path, f"devices/{index}/{file}", row["device_id"]))
    return jobs


def _where(ref: dict[str, Any]) -> str:
    offset = ref.get("offset")
    return ref["key"] if offset is None else f"{ref['key']} bytes {offset}+{ref['size']}"


async def fetch_from(
    store: Store, order_id: str, dest: Path, line_keys: list[Path] | None = None
) -> int:
    """Write an order's manifest and every file it lists under `dest`, checking each sha256.

    Pieces of lot objects are cut out through one RefReader: each lot object is fetched once
    (its devices' files are neighbours in the manifest, so they are read while it is kept).
    Sealed objects are opened with the line's key (`line_keys`, else the state folder's key of
    the order's line) and written as plaintext, checked against the plaintext sha256; without
    the key they are written as they are, as `<name>.sealed`.
    """
    found = await bucket_objects.manifest_doc(store, order_id)
    if found is None:
        raise MatterfabError(f"order {order_id} has no manifest yet (not completed)")
    raw, doc = found
    _check_dac_storage(doc)
    jobs = _fetch_jobs(doc, dest)
    line = doc.get("line")
    keys = lines.LineKeys.load(line or "", line_keys or [], config.state_dir())
    sealed_to = {j.ref["sealed"]["key"] for j in jobs if j.ref.get("sealed")}
    if line_keys and sealed_to and not sealed_to & set(keys.keys):
        raise MatterfabError(
            f"--line-key: none of the keys given ({', '.join(keys.fingerprints)}) is the line "
            f"{line} key the order is sealed to ({', '.join(sorted(sealed_to))})"
        )
    kept_sealed = 0
    dest.mkdir(parents=True, exist_ok=True)
    (dest / bucket_keys.MANIFEST_JSON).write_bytes(raw)
    reader = RefReader(store)
    sem = asyncio.Semaphore(32)
    with Progress(
        TextColumn("fetching"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("fetch", total=len(jobs))

        async def one(job: FetchJob) -> None:
            nonlocal kept_sealed
            ref, path, what = job.ref, job.path, job.what
            async with sem:
                try:
                    data = await reader.read(ref)
                except IntegrityError:
                    raise MatterfabError(
                        f"{what} ({_where(ref)}): sha256 does not match manifest.json"
                    ) from None
                except KeyError:
                    raise MatterfabError(
                        f"{what} ({ref['key']}): not in the bucket, though manifest.json lists it"
                    ) from None
            seal = ref.get("sealed")
            if seal is not None and job.device_id is not None:
                if seal["key"] in keys.keys:
                    try:
                        data = keys.open(
                            data,
                            ObjectRef.model_validate(ref),
                            order_id,
                            job.device_id,
                            path.name,
                        )
                    except SealError as exc:
                        raise MatterfabError(f"{what}: {exc}") from None
                else:
                    path = path.with_name(path.name + SEALED_SUFFIX)
                    kept_sealed += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            progress.advance(task)

        await asyncio.gather(*(one(job) for job in jobs))
    if kept_sealed:
        console.print(
            f"{kept_sealed} objects sealed to line {line} written as <name>{SEALED_SUFFIX} "
            "(no key for them here: give --line-key PATH to write them opened)"
        )
    if doc.get("dac_storage") == "device-key":
        await _fetch_bound_dacs(store, order_id, len(doc["devices"]), dest)
    return len(doc["devices"])


async def _fetch_bound_dacs(store: Store, order_id: str, quantity: int, dest: Path) -> None:
    """device-key orders: `devices/<index>/dac.der` of each device a station bound."""
    for bound in await device_keys.bound_dacs(store, order_id, quantity):
        if bound.der is None:
            raise MatterfabError(f"{bound.device_id}: {bound.problem}")
        path = dest / device_keys.dac_path(bound.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bound.der)


async def fetch_order(order_id: str, dest: Path, line_keys: list[Path] | None = None) -> int:
    """Download an order's manifest and every device's files, checking each sha256."""
    async with ObjectStore.open(config.load_s3_settings()) as store:
        await store.check()  # a missing bucket would read as "no manifest yet"
        return await fetch_from(store, order_id, dest, line_keys)


@app.command()
def fetch(
    order_id: Annotated[str, typer.Argument(help="Order ID")],
    out_dir: Annotated[Path, typer.Option("--out", help="Destination folder")],
    line_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--line-key",
            help="The order's line key (PEM): sealed objects are written opened; without "
            "it (and no key in the state folder) they are written as <name>.sealed",
        ),
    ] = None,
) -> None:
    """Download manifest.csv/json, qrcodes.zip and every device's objects, sha256-checked."""
    try:
        n = asyncio.run(fetch_order(order_id, out_dir, line_key))
    except MatterfabError as exc:
        raise fail(exc, EXIT_FAILED) from exc
    out.print(f"fetched {n} devices of {order_id} into {out_dir}")
