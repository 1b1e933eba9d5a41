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

import asyncio
import logging

from matterfab.errors import InvalidInput
from matterfab.fleet import index, scrap
from matterfab.messages import ImageReady
from matterfab.objectstore import Store
from matterfab.services.station import flashing

log = logging.getLogger(__name__)
OUTPUT_TAIL = 200


async def run_test(template: str, port: str | None, msg: ImageReady, timeout: float) -> str | None:
    """None when the device passes; else why it failed (one line)."""
    values = {"device_id": msg.device_id, "serial_num": msg.serial_num, "port": port}
    try:
        argv = flashing.render_command(template, values)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except (InvalidInput, OSError) as exc:
        return f"end-of-line test could not run: {exc}"
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"end-of-line test timed out after {timeout:g}s"
    if proc.returncode == 0:
        return None
    tail = " ".join(raw.decode("utf-8", "replace").split())[-OUTPUT_TAIL:]
    return f"end-of-line test failed (exit {proc.returncode}): {tail}"


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
