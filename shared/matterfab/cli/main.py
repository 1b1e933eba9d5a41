"""The `matterfab` command: one entry point for the stack, the services and the operators."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated

import typer

from matterfab.cli import firmware, monitor, orders, pki, serial, stack, station, verify

app = typer.Typer(help="matterfab: Matter factory data on Kafka and S3.", no_args_is_help=True)
stack.register(app)
app.add_typer(pki.app, name="pki")
app.add_typer(orders.app, name="order")
app.add_typer(serial.app, name="serial")
app.command("verify")(verify.verify)
app.add_typer(station.app, name="station")
app.add_typer(firmware.app, name="firmware")
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


def main() -> None:
    """Run the command, then leave without interpreter finalization.

    obstore's Rust runtime threads can still be releasing Python objects when the interpreter
    finalizes, which CPython 3.11 answers with abort(): measured, 1 of 40 `pki init-test` runs
    under load exited with SIGABRT after doing all its work. Everything that matters is done
    when the command returns (objects written, messages acknowledged, files closed), so the
    process flushes its output and exits with the command's status.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message"), as the interpreter would
    return 1


if __name__ == "__main__":
    main()
