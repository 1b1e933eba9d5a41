"""The `matterfab` command: one entry point for the stack, the services and the operators."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from matterfab.cli import monitor, orders, pki, stack, station, verify

app = typer.Typer(help="matterfab: Matter factory data on Kafka and S3.", no_args_is_help=True)
stack.register(app)
app.add_typer(pki.app, name="pki")
app.add_typer(orders.app, name="order")
app.command("verify")(verify.verify)
app.add_typer(station.app, name="station")
app.command("lag")(monitor.lag)

SERVICES = ("allocator", "signer", "builder", "assembler", "station", "monitor")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")],
) -> None:
    """Run one service in the foreground until SIGTERM."""
    if service not in SERVICES:
        typer.echo(f"error: service: must be one of {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    try:
        module = importlib.import_module(f"matterfab.services.{service}.main")
    except ModuleNotFoundError as exc:
        typer.echo(f"error: service {service} is not available: {exc}", err=True)
        raise typer.Exit(1) from exc
    module.main()


if __name__ == "__main__":
    app()
