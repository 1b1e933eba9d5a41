"""The `matterfab` command: one entry point for the stack, the services and the operators.

Failures are decided here once for every command (`cli.failures`): one line on stderr naming
what failed, where, and what to set or start; exit 1; no traceback unless `--debug` or
`MATTERFAB_DEBUG=1`. Commands give up on an unreachable Kafka or S3 store within
COMMAND_DEADLINE_S; `serve` and `station run` are long-running and wait it out instead.

Settings enter here (config.LogSettings, …) and are passed on. A command that talks to a stack
names it on stderr (`stack: /w/.matterfab (kafka …, s3 …)`) when stderr is a terminal or with
`--debug`: a script's stderr keeps its one `error:` line, and `--json` output is untouched.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated

import typer

from matterfab import config, kafka
from matterfab.cli import (
    dac,
    device,
    failures,
    firmware,
    line,
    monitor,
    orders,
    pki,
    serial,
    stack,
    station,
    verify,
)
from matterfab.cli.doctor import doctor as doctor_command
from matterfab.services import registry

app = typer.Typer(
    help="matterfab: Matter factory data on Kafka and S3.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a failure is one line (cli.failures), not a Rich dump
)
stack.register(app)
app.add_typer(pki.app, name="pki")
app.add_typer(orders.app, name="order")
app.add_typer(serial.app, name="serial")
app.command("verify")(verify.verify)
app.add_typer(station.app, name="station")
app.add_typer(firmware.app, name="firmware")
app.add_typer(dac.app, name="dac")
app.add_typer(line.app, name="line")
app.command("lag")(monitor.lag)
app.add_typer(device.app, name="device")
app.command("doctor")(doctor_command)

SERVICES = tuple(registry.SERVICES)  # every service, in pipeline order
# Seconds a command waits for an unreachable Kafka or S3 store before it says so (issue #15:
# ≤ 15 s in all, start-up included); MATTERFAB_KAFKA_CONNECT_TIMEOUT_S and
# MATTERFAB_S3_RETRY_DEADLINE_S override it.
COMMAND_DEADLINE_S = 10.0
LONG_RUNNING = ("serve", "station")


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also MATTERFAB_DEBUG=1).")
    ] = False,
) -> None:
    """matterfab: Matter factory data on Kafka and S3."""
    if debug:
        failures.use_debug(True)
    if failures.debug() or sys.stderr.isatty():
        config.announce_stack(say_stack)
    if ctx.invoked_subcommand not in LONG_RUNNING:
        config.use_command_deadline(COMMAND_DEADLINE_S)
        # A command reports its own failure in one line; library retry chatter stays out
        # of a script's stderr unless debugging.
        verbose = config.load_log_settings().verbose  # MATTERFAB_LOG_LEVEL=DEBUG: say it all
        logging.basicConfig(
            level=logging.DEBUG
            if verbose
            else logging.WARNING
            if failures.debug()
            else logging.ERROR,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if not failures.debug():
            kafka.quiet_connection_logs(everything=True)


def say_stack(line: str) -> None:
    """Print which stack this command uses (config.describe_stack) on stderr."""
    print(line, file=sys.stderr, flush=True)


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")],
) -> None:
    """Run one service in the foreground until SIGTERM."""
    if service not in SERVICES:
        typer.echo(f"error: service: must be one of {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    try:
        module = importlib.import_module(registry.SERVICES[service].module)
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
        failures.use_debug(config.load_log_settings().debug)
        app()
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # anything a command did not handle: one line, exit 1
        failures.report(exc)
        code = failures.EXIT_FAILED
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
