"""Printing each device's label at the station, right after the device is flashed.

The station is the one place that knows which board is in the fixture: a label printed the
moment that board is flashed cannot be stuck on another unit. Two ways to print:

- `--print-zpl HOST:PORT`: the label as ZPL, sent raw over TCP (a Zebra printer's port 9100):
  connect, write the `^XA` … `^XZ` block, close. One connection per label.
- `--print-cmd TEMPLATE`: a command run for each label, with `{label_zpl}`, `{label_pdf}` and
  `{label_png}` (files of that label, made only when the template names them), `{device_id}`,
  `{serial_num}` and `{mac}`; exit 0 is printed.

A label never holds back or loses the flash result: printing is tried `print_attempts` times
(each bounded by `print_timeout`, with doubling backoff), and whatever happens, the outcome is
recorded in the device's StationResult (`label`) with the flash. The layout is the order's
(`label` in `order.json`, read once per order), and the MAC is the one just read from the board.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter

from matterfab.bucket import objects
from matterfab.errors import InvalidInput, invalid
from matterfab.labels import pdf, png, zpl
from matterfab.labels.layout import LabelContent, LabelLayout, Placement, place
from matterfab.messages import ImageReady
from matterfab.messages.station import LabelPrint
from matterfab.objectstore import Store
from matterfab.services.station import commands

if TYPE_CHECKING:
    from matterfab.services.station.config import StationSettings

log = logging.getLogger(__name__)

LABELS = Counter("matterfab_labels_total", "Device labels a station printed", ["outcome"])
for _outcome in ("printed", "failed"):  # both series from 0: the first failure is an increase
    LABELS.labels(_outcome)
PLACEHOLDERS = ("label_zpl", "label_pdf", "label_png", "device_id", "serial_num", "mac")
MAX_BACKOFF_S = 5.0
LABEL_PAGE = pdf.Sheet(paper="label")  # {label_pdf}: one page the size of the label


class PrintFailed(Exception):
    """One print attempt failed; the message is the one-line reason."""


class Printer(Protocol):
    """Prints one placed label."""

    async def print_label(self, label: Placement, device_id: str) -> None:
        """Print it, or raise PrintFailed(reason)."""
        ...


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) as (host, port); InvalidInput naming print_zpl."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise invalid("print_zpl", f"must be HOST:PORT (e.g. 10.0.0.7:9100), not {value!r}")
    return host, int(port)


def check_template(template: str) -> list[str]:
    """Split a print-command template into arguments, checking every placeholder."""
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise invalid("print_cmd", f"must split into arguments like a shell line ({exc})") from None
    if not args:
        raise invalid("print_cmd", "must name a command to run")
    for arg in args:
        _names(arg)
    return args


def _names(arg: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(arg))
    except ValueError as exc:
        raise invalid("print_cmd", f"malformed placeholder in {arg!r} ({exc})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise invalid("print_cmd", f"unknown placeholder {{{name}}}; allowed: {allowed}")
        names.append(name)
    return names


class ZplPrinter:
    """Sends raw ZPL over TCP (port 9100 style): one connection per label."""

    def __init__(self, address: str, timeout: float):
        self.host, self.port = parse_address(address)
        self.timeout = timeout

    @property
    def where(self) -> str:
        """The printer, as log lines and reasons name it."""
        return f"printer {self.host}:{self.port}"

    async def print_label(self, label: Placement, device_id: str) -> None:
        """Connect, send the label, close; PrintFailed naming the printer on any failure."""
        data = zpl.render(label).encode("ascii")
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(data)
                    await writer.drain()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except ConnectionRefusedError:
            raise PrintFailed(f"{self.where} refused the connection") from None
        except TimeoutError:
            raise PrintFailed(f"{self.where} did not take the label in {self.timeout:g}s") from None
        except OSError as exc:
            raise PrintFailed(f"{self.where}: {exc.strerror or exc}") from None


class CommandPrinter:
    """Runs the print command template on files of the label."""

    def __init__(self, template: str, timeout: float):
        self.template = template
        self.args = check_template(template)
        self.timeout = timeout
        self.wanted = {name for arg in self.args for name in _names(arg)}

    async def print_label(self, label: Placement, device_id: str) -> None:
        """Write the files the template names, run it; exit 0 is printed."""
        workdir = Path(tempfile.mkdtemp(prefix="matterfab-label-"))
        try:
            values = {
                "device_id": device_id,
                "serial_num": label.content.serial_num,
                "mac": label.content.mac or "",
            }
            renderers = {
                "label_zpl": ("label.zpl", lambda: zpl.render(label).encode("ascii")),
                "label_pdf": ("label.pdf", lambda: pdf.render([label], LABEL_PAGE)),
                "label_png": ("label.png", lambda: png.render(label)),
            }
            for name, (file, render) in renderers.items():
                if name in self.wanted:
                    (workdir / file).write_bytes(render())
                    values[name] = str(workdir / file)
            argv = [arg.format(**values) for arg in self.args]
            try:
                await commands.run("print command", argv, self.timeout)
            except commands.CommandFailed as exc:
                raise PrintFailed(str(exc)) from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class LabelPrinting:
    """Prints a flashed device's label with retries, and says what became of it."""

    def __init__(
        self, store: Store, printer: Printer, attempts: int = 3, backoff: float = 0.5
    ) -> None:
        self.store = store
        self.printer = printer
        self.attempts = attempts
        self.backoff = backoff
        self.layouts: dict[str, LabelLayout] = {}

    async def layout(self, order_id: str) -> LabelLayout:
        """The order's label layout (`order.json` `label`, else the defaults), read once."""
        layout = self.layouts.get(order_id)
        if layout is None:
            order = await objects.read_order_fields(self.store, order_id)
            given = order.label if order is not None else None
            layout = LabelLayout.model_validate(given or {}, strict=False)
            self.layouts[order_id] = layout
        return layout

    async def print(self, msg: ImageReady, mac: str) -> LabelPrint:
        """Print the device's label; never raises (the flash result must go out)."""
        ctx = {"order_id": msg.order_id, "device_id": msg.device_id}
        try:
            content = LabelContent.from_record(msg.model_dump(), mac=mac)
            label = place(await self.layout(msg.order_id), content)
        except InvalidInput as exc:
            return self._failed(0, str(exc), ctx)
        except Exception as exc:  # the order's layout unreadable: report, do not stop
            return self._failed(0, f"{type(exc).__name__}: {exc}"[:300], ctx)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 2), MAX_BACKOFF_S))
            try:
                await self.printer.print_label(label, msg.device_id)
            except PrintFailed as exc:
                reason = str(exc)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
            else:
                LABELS.labels("printed").inc()
                log.info("label printed", extra={**ctx, "mf_attempts": attempt})
                return LabelPrint(status="printed", attempts=attempt)
            log.info("label print attempt %d failed: %s", attempt, reason, extra=ctx)
        return self._failed(self.attempts, reason, ctx)

    @staticmethod
    def _failed(attempts: int, reason: str, ctx: dict[str, str]) -> LabelPrint:
        LABELS.labels("failed").inc()
        log.error("label not printed after %d attempts: %s", attempts, reason, extra=ctx)
        return LabelPrint(status="failed", attempts=attempts, reason=reason)


def from_settings(settings: StationSettings, store: Store) -> LabelPrinting | None:
    """The station's label printing as its settings ask (None: it prints no labels)."""
    printer: Printer
    if settings.print_zpl is not None:
        printer = ZplPrinter(settings.print_zpl, settings.print_timeout)
        where = printer.where
    elif settings.print_cmd is not None:
        printer = CommandPrinter(settings.print_cmd, settings.print_timeout)
        where = "the print command"
    else:
        return None
    log.info("printing each flashed device's label with %s", where)
    return LabelPrinting(store, printer, settings.print_attempts)
