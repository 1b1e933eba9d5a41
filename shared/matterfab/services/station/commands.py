"""The station's external commands, run the one way: flash, CSR, certificate write, eFuse burn,
label print and end-of-line test.

A command gets no standard input, its standard output and error together, and a time limit; one
that runs over is killed. Anything short of exit 0 is a `CommandFailed` whose message is one line
naming the command and why (could not start, timed out, exit code and the tail of its output), so
each caller only maps it to its own outcome (a failed flash attempt, a burn failure, ...).
"""

from __future__ import annotations

import asyncio

OUTPUT_TAIL = 300  # characters of a failed command's output kept in the reason


class CommandFailed(Exception):
    """A command did not run to exit 0; `returncode` is None when it never ran or timed out."""

    def __init__(self, message: str, returncode: int | None = None, tail: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.tail = tail


def tail(output: str) -> str:
    """The end of a command's output on one line (whitespace runs as one space)."""
    return " ".join(output.split())[-OUTPUT_TAIL:]


async def run(what: str, argv: list[str], timeout: float) -> str:
    """Run `argv` (called `what` in messages) within `timeout` seconds; its output on exit 0."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise CommandFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(f"{what} timed out after {timeout:g}s") from None
    output = raw.decode("utf-8", "replace")
    if proc.returncode != 0:
        end = tail(output)
        raise CommandFailed(f"{what} exited {proc.returncode}: {end!r}", proc.returncode, end)
    return output
