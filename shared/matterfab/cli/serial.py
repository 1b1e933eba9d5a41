"""`matterfab serial check`: ask the identity registry before submitting a work order.

Reads the product's claim chain (the allocator's registry, `state/products/<VVVV>-<PPPP>/claims/`)
and says whether serial numbers `<prefix><start..start+count-1>` are free, and if not, which
order holds which of them. Exit codes for scripts: 0 all free, 2 some held, 1 on any failure.
The answer is a snapshot: only the allocator's claim at acceptance reserves serials.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console

from matterfab import config
from matterfab.cli.pki import parse_id
from matterfab.errors import MatterfabError
from matterfab.s3 import ObjectStore
from matterfab.services.allocator import identity_registry
from matterfab.services.allocator.claim_chain import ClaimChains
from matterfab.services.allocator.order_book import order_reader

app = typer.Typer(help="Ask which serial numbers are free for a product.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

EXIT_FREE, EXIT_FAILED, EXIT_HELD = 0, 1, 2


async def check(
    vendor_id: int, product_id: int, prefix: str, start: int, count: int, digits: int | None
) -> dict[str, Any]:
    """The registry's answer for one range, as the JSON `--json` prints."""
    async with ObjectStore.open(config.load_s3_settings()) as store:
        chain = await ClaimChains(store, order_reader(store)).chain(vendor_id, product_id)
    held = identity_registry.check_range(chain.registry, prefix, start, count, digits)
    return {
        "vendor_id": vendor_id,
        "product_id": product_id,
        "prefix": prefix,
        "start": start,
        "count": count,
        "digits": digits,
        "free": not held,
        "held": [
            {
                "first": h.run.serial(h.lo),
                "last": h.run.serial(h.hi),
                "count": h.hi - h.lo + 1,
                "order_id": h.order_id,
            }
            for h in held
        ],
        "orders_in_registry": len(chain.registry.orders),
    }


@app.command("check")
def check_command(
    vid: Annotated[str, typer.Option("--vid", help="Vendor ID, e.g. 0xFFF1.")],
    pid: Annotated[str, typer.Option("--pid", help="Product ID, e.g. 0x8000.")],
    start: Annotated[int, typer.Option("--start", min=0, help="First number.")],
    count: Annotated[int, typer.Option("--count", min=1, max=1_000_000, help="How many.")],
    prefix: Annotated[str, typer.Option("--prefix", help="Text before the number.")] = "",
    digits: Annotated[
        int | None,
        typer.Option("--digits", min=1, max=20, help="Zero-padded width (default: every width)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Say whether serial numbers are free for a product and, if not, which order holds them."""
    try:
        answer = asyncio.run(check(parse_id(vid), parse_id(pid), prefix, start, count, digits))
    except (MatterfabError, ValueError) as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        out.print_json(json.dumps(answer))
    else:
        width = f"{digits}" if digits is not None else "any"
        what = (
            f"{prefix}<{start}..{start + count - 1}, digits {width}> for "
            f"{answer['vendor_id']:04X}/{answer['product_id']:04X}"
        )
        if answer["free"]:
            out.print(f"free: {what}")
        else:
            out.print(f"held: {what}")
            for h in answer["held"]:
                values = h["first"] if h["count"] == 1 else f"{h['first']}..{h['last']}"
                out.print(f"  {values} ({h['count']}) held by order {h['order_id']}")
    raise typer.Exit(EXIT_FREE if answer["free"] else EXIT_HELD)
