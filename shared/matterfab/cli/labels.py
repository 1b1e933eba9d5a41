"""`matterfab order labels ORDER --format pdf|zpl|png --out PATH [--devices RANGE]`.

An order's labels from what the bucket holds once it is completed: each device's codes from
`manifest.json`, the layout from the order's `label` (`order.json`; absent: the defaults), and
the MAC of each device a station has bound (`bindings.csv`), if any; `--layout FILE` prints
them on other label stock. Outputs: one ZPL job
(`--out FILE`), one PDF of sheets (`--out FILE`), or one PNG per label (`--out DIR`, named
`<index>.png` as in the manifest). Exit 2 for bad input (one line naming the option or the
layout field), 1 for any other failure.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from matterfab import config
from matterfab.bucket import objects as bucket_objects
from matterfab.cli.failures import fail
from matterfab.errors import FieldError, InvalidInput, MatterfabError, invalid
from matterfab.labels import pdf, png, zpl
from matterfab.labels.layout import LabelContent, LabelLayout, Placement, place
from matterfab.messages.base import index_str
from matterfab.messages.codec import validation_errors
from matterfab.messages.onboarding import DYNAMIC
from matterfab.objectstore import Store
from matterfab.s3 import ObjectStore

FORMATS = ("pdf", "zpl", "png")
EXIT_FAILED, EXIT_INVALID = 1, 2
_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def parse_devices(text: str | None, quantity: int) -> list[int]:
    """Device indices from `0-9,15` (inclusive ranges, zero-based as in the manifest)."""
    if text is None:
        return list(range(quantity))
    chosen: set[int] = set()
    for part in text.split(","):
        m = _RANGE.fullmatch(part)
        if m is None:
            raise invalid("--devices", f"{part.strip()!r} is not an index or a range like 0-9")
        first = int(m[1])
        last = int(m[2]) if m[2] is not None else first
        if first > last or last >= quantity:
            raise invalid(
                "--devices", f"{part.strip()!r} is not within 0-{quantity - 1} (first <= last)"
            )
        chosen.update(range(first, last + 1))
    return sorted(chosen)


@dataclass(frozen=True)
class OrderLabels:
    """An order's label layout and the content of each chosen device's label, by index."""

    layout: LabelLayout
    devices: list[tuple[int, LabelContent]]

    def placements(self) -> list[Placement]:
        """Every label placed (InvalidInput naming the field if one does not fit)."""
        return [place(self.layout, content) for _, content in self.devices]


def read_layout(path: Path) -> LabelLayout:
    """A label layout from a JSON file (`--layout`); InvalidInput naming `label.<field>`."""
    try:
        return LabelLayout.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise InvalidInput(
            [
                FieldError(f"label.{e.field}" if e.field != "$" else "--layout", e.message)
                for e in validation_errors(exc)
            ]
        ) from None
    except OSError as exc:
        raise invalid("--layout", f"cannot read {path}: {exc.strerror or exc}") from None


async def load(
    store: Store, order_id: str, devices: str | None, layout: LabelLayout | None = None
) -> OrderLabels:
    """Read the order's manifest, layout (unless given) and bindings."""
    rows = await bucket_objects.read_manifest_devices(store, order_id)
    if rows is None:
        raise MatterfabError(f"order {order_id} has no manifest yet (not completed)")
    by_index = {int(row["index"]): row for row in rows}
    if layout is None:
        order = await bucket_objects.read_order_fields(store, order_id)
        given = order.label if order is not None else None
        layout = LabelLayout.model_validate(given or {}, strict=False)
    macs: dict[str, str] = {}
    bindings = await bucket_objects.bindings_csv(store, order_id)
    if bindings is not None:
        for b in csv.DictReader(io.StringIO(bindings.decode())):
            if b.get("mac"):
                macs[b["device_id"]] = b["mac"]
    chosen = parse_devices(devices, len(rows))
    return OrderLabels(
        layout,
        [
            (i, LabelContent.from_record(by_index[i], macs.get(by_index[i]["device_id"])))
            for i in chosen
            # A dynamic-passcode device has no code to print: it shows its own.
            if by_index[i]["qr_payload"] not in ("", DYNAMIC)
        ],
    )


def write(labels: OrderLabels, fmt: str, out: Path, sheet: pdf.Sheet) -> int:
    """Render the labels in `fmt` to `out`; the number of labels written."""
    placements = labels.placements()
    if fmt == "zpl":
        out.write_text(zpl.render_all(placements), encoding="ascii")
    elif fmt == "pdf":
        out.write_bytes(pdf.render(placements, sheet))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for (index, _), p in zip(labels.devices, placements, strict=True):
            (out / f"{index_str(index)}.png").write_bytes(png.render(p))
    return len(placements)


async def _run(
    order_id: str,
    fmt: str,
    out: Path,
    devices: str | None,
    sheet: pdf.Sheet,
    layout: LabelLayout | None,
) -> int:
    async with ObjectStore.open(config.load_s3_settings()) as store:
        await store.check()
        labels = await load(store, order_id, devices, layout)
    return await asyncio.to_thread(write, labels, fmt, out, sheet)


def labels(
    order_id: Annotated[str, typer.Argument(help="Order ID (completed)")],
    fmt: Annotated[str, typer.Option("--format", help="pdf, zpl or png")],
    out: Annotated[Path, typer.Option("--out", help="File (pdf, zpl) or folder (png)")],
    devices: Annotated[
        str | None, typer.Option("--devices", help="Indices, e.g. 0-9,15 (default: all)")
    ] = None,
    paper: Annotated[
        str, typer.Option("--paper", help="pdf: a4, letter, or label (a page per label)")
    ] = "a4",
    crop_marks: Annotated[bool, typer.Option("--crop-marks", help="pdf: draw crop marks")] = False,
    gap: Annotated[float, typer.Option("--gap-mm", help="pdf: space between labels, mm")] = 2.0,
    layout_file: Annotated[
        Path | None,
        typer.Option("--layout", help="A label layout (JSON) instead of the order's `label`"),
    ] = None,
) -> None:
    """Render an order's device labels: ZPL for thermal printers, PDF sheets, or PNGs."""
    try:
        if fmt not in FORMATS:
            raise invalid("--format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if paper not in (*pdf.PAPERS, "label"):
            raise invalid("--paper", f"must be a4, letter or label, not {paper!r}")
        if not 0 <= gap <= 50:
            raise invalid("--gap-mm", "must be within 0..50")
        sheet = pdf.Sheet(paper=paper, gap_mm=gap, crop_marks=crop_marks)  # type: ignore[arg-type]
        layout = read_layout(layout_file) if layout_file is not None else None
        n = asyncio.run(_run(order_id, fmt, out, devices, sheet, layout))
    except InvalidInput as exc:
        raise fail(exc, EXIT_INVALID) from exc
    except MatterfabError as exc:
        raise fail(exc, EXIT_FAILED) from exc
    typer.echo(f"wrote {n} labels of {order_id} to {out}")
