"""A station's end-of-line test (`--eol-cmd`): a device that fails it is scrapped at once.

After a device is flashed and its outcome recorded, the station runs the test command
(placeholders `{device_id}`, `{serial_num}`, `{port}`). Exit 0 passes. Any other exit, or a
timeout, scraps the device (fleet/scrap.py: a write-once record naming this station, and its
DAC revoked as cessationOfOperation); the station goes on with the next image. The station
writes the device's index record first (the assembler may not have yet), so its DAC is known.
A station that dies between the flash record and the test does not test that device again:
scrap it by hand (`matterfab device scrap`) if it fails later.
"""

from __future__ import annotations

import logging

from matterfab.errors import InvalidInput
from matterfab.fleet import index, scrap
from matterfab.messages import ImageReady
from matterfab.objectstore import Store
from matterfab.services.station import commands, flashing

log = logging.getLogger(__name__)


async def run_test(template: str, port: str | None, msg: ImageReady, timeout: float) -> str | None:
    """None when the device passes; else why it failed (one line)."""
    values = {"device_id": msg.device_id, "serial_num": msg.serial_num, "port": port}
    try:
        argv = flashing.render_command(template, values)
    except InvalidInput as exc:
        return f"end-of-line test could not run: {exc}"
    try:
        await commands.run("end-of-line test", argv, timeout)
    except commands.CommandFailed as exc:
        if exc.returncode is None:  # never ran, or ran over its time
            could_not = str(exc).startswith("cannot run")
            return f"end-of-line test could not run: {exc}" if could_not else str(exc)
        return f"end-of-line test failed (exit {exc.returncode}): {exc.tail}"
    return None


async def check(
    store: Store, template: str, port: str | None, station_id: str, msg: ImageReady, timeout: float
) -> bool:
    """Run the test on a flashed device; scrap it when it fails. True when it passed."""
    why = await run_test(template, port, msg, timeout)
    if why is None:
        return True
    await index.record_image(store, index.image_of(msg))
    await scrap.scrap(store, msg.device_id, why, f"station {station_id}", station_id=station_id)
    log.warning("device scrapped: %s", why, extra={"device_id": msg.device_id})
    return False
