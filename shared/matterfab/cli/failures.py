"""What a failed command prints: one line naming what failed, where, and what to set or start.

Scripts (an ERP's, a line's) and people read the same line; it goes to stderr, unwrapped, and
the command exits 1. `MATTERFAB_DEBUG=1` (or `matterfab --debug …`) adds the traceback. The
library raises typed errors that already read this way (`matterfab.errors.DependencyError`);
anything else that escapes a command is described here from its type, never shown raw.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from matterfab.errors import InvalidInput, MatterfabError

DEBUG_ENV = "MATTERFAB_DEBUG"
EXIT_FAILED = 1
_debug = False  # set once by the CLI entry (cli.main) from LogSettings.debug and --debug


def use_debug(on: bool) -> None:
    """Show tracebacks with failures from now on (MATTERFAB_DEBUG=1 or --debug)."""
    global _debug
    _debug = on


def debug() -> bool:
    """Whether tracebacks are wanted (MATTERFAB_DEBUG=1 or --debug)."""
    return _debug


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def _kafka_where() -> str:
    try:
        from matterfab.config import load_kafka_settings

        return f"Kafka at {load_kafka_settings().bootstrap}"
    except MatterfabError:
        return "Kafka"


def _s3_where() -> str:
    try:
        from matterfab.config import load_s3_settings

        s = load_s3_settings()
        return f"S3 store at {s.endpoint} (bucket {s.bucket})"
    except MatterfabError:
        return "S3 store"


def describe(exc: BaseException) -> str:
    """One line for any failure (the message of our own errors; a description of others)."""
    if isinstance(exc, InvalidInput):
        return "; ".join(str(e) for e in exc.errors)
    if isinstance(exc, MatterfabError):
        return _first_line(str(exc)) or type(exc).__name__
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    detail = _first_line(str(exc))[:200]
    if module.startswith("aiokafka"):
        return (
            f"{_kafka_where()} failed: {name}: {detail}; start it (`make up`) or set "
            "MATTERFAB_KAFKA_BOOTSTRAP"
        )
    if module.startswith(("obstore", "botocore", "aiobotocore")):
        return (
            f"{_s3_where()} failed: {name}: {detail}; start it (`make up`) or set "
            "MATTERFAB_S3_ENDPOINT"
        )
    if isinstance(exc, TimeoutError):
        return f"timed out ({detail or 'no answer in time'})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or detail}"
    return f"{name}: {detail}" if detail else name


def report(exc: BaseException) -> None:
    """Print the failure's line (and, in debug mode, its traceback) to stderr."""
    if debug():
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {describe(exc)}", file=sys.stderr, flush=True)


def fail(exc: BaseException, code: int = EXIT_FAILED) -> typer.Exit:
    """Report `exc` and return the Exit to raise (`raise fail(exc) from exc`)."""
    report(exc)
    return typer.Exit(code)


T = TypeVar("T")


@contextmanager
def command_errors() -> Iterator[None]:
    """A command's failures as one `error:` line each: exit 2 for rejected input (every broken
    rule), 1 for anything else matterfab or the file system says."""
    try:
        yield
    except InvalidInput as exc:
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from exc
    except (MatterfabError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def with_store(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(store)` on the configured S3 store (opened and closed around it)."""
    from matterfab import config  # late: keeps `matterfab --help` fast
    from matterfab.s3 import ObjectStore

    settings = config.load_s3_settings()

    async def run() -> T:
        async with ObjectStore.open(settings) as store:
            return await work(store)

    return asyncio.run(run())
