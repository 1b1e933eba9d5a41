"""A station's part in `dac_storage: device-key`: the device's CSR out, its DAC back in.

After a device of such an order is flashed (`DeviceKeys.bind`), per attempt (up to
`max_attempts`, doubling backoff):

1. run `--csr-cmd` (`{port} {device_id} {serial_num} {chip} {mac}`); its output must hold
   exactly one PEM CERTIFICATE REQUEST among any log lines, self-signed over a P-256 key;
2. send it to the signer (`mfg.dac.requests`, keyed by device_id) and wait for the reply with
   the same request id (`mfg.dac.replies`), at most `--dac-timeout` seconds;
3. check the DAC is over the CSR's key and chains to the PAI sent with it, write `dac.der`,
   `pai.der` and `esp_secure_cert.bin` (DAC and PAI, no key entry) to a temporary folder and
   run `--cert-cmd` (`{dac} {pai} {secure_cert} {device_id} {port} {serial_num}`): exit 0
   means written;
4. return the DAC serial and sha256, which the station reports with the device's MAC.

A bad CSR and a signer's refusal are the device's answer: they fail it at once (the same board
would print the same CSR). A signer that does not answer in time and a cert command that fails
are retried: the signer answers a retry with the same key with the same DAC, so a retry never
makes a second one. Any failure is one line (`DeviceKeyFailed`), for that device alone. The
private key never leaves the device: only its CSR passes through here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import shlex
import shutil
import string
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from cryptography import x509

from matterfab import kafka
from matterfab.bucket import objects
from matterfab.config import KafkaSettings
from matterfab.errors import AttestationError, InvalidInput, StackError, invalid
from matterfab.matter import attestation, csr, secure_cert
from matterfab.messages import DAC_REPLIES, DAC_REQUESTS, ImageReady
from matterfab.messages.codec import decode
from matterfab.messages.dac_requests import DacReply, DacRequest
from matterfab.runtime import Emit, Send
from matterfab.s3 import ObjectStore
from matterfab.services.station import commands

log = logging.getLogger(__name__)

CSR_PLACEHOLDERS = ("port", "device_id", "serial_num", "chip", "mac")
CERT_PLACEHOLDERS = ("dac", "pai", "secure_cert", "device_id", "port", "serial_num")
DEFAULT_DAC_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 15.0  # sending a CSR (acknowledged by the broker), before the wait begins
MAX_BACKOFF_S = 30.0


class DeviceKeyFailed(Exception):
    """Binding a device-born key failed; the message is the one-line reason reported."""


class _Retry(DeviceKeyFailed):
    """A failure another attempt may cure (a signer timeout, a failed cert command)."""


def check_template(field: str, template: str, allowed: tuple[str, ...]) -> list[str]:
    """Split a command template like a shell line, every placeholder one of `allowed`."""
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise invalid(field, f"must split into arguments like a shell line ({exc})") from None
    if not args:
        raise invalid(field, "must name a command to run")
    for arg in args:
        try:
            parsed = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise invalid(field, f"malformed placeholder in {arg!r} ({exc})") from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in allowed:
                names = ", ".join("{" + p + "}" for p in allowed)
                raise invalid(field, f"unknown placeholder {{{name}}}; allowed: {names}")
            if spec or conversion:
                raise invalid(field, f"placeholder {{{name}}} must be plain (no ! or :)")
    return args


def render(
    field: str, template: str, allowed: tuple[str, ...], values: Mapping[str, Any]
) -> list[str]:
    """The argv of a template; a placeholder without a value is an error naming it."""
    argv = []
    for arg in check_template(field, template, allowed):
        for _, name, _, _ in string.Formatter().parse(arg):
            if name is not None and values.get(name) is None:
                raise invalid(field, f"placeholder {{{name}}} has no value for this device")
        argv.append(arg.format(**{k: str(v) for k, v in values.items() if v is not None}))
    return argv


async def run_command(what: str, argv: list[str], timeout: float) -> str:
    """Run a command (commands.run); its output, or _Retry naming why it failed."""
    try:
        return await commands.run(what, argv, timeout)
    except commands.CommandFailed as exc:
        raise _Retry(str(exc)) from None


class DacExchange:
    """Sends DAC requests and hands each waiting device the reply with its request id.

    Replies are read without a consumer group, from every partition of the reply topic,
    starting at its end when the exchange starts (before the first request is sent, so no
    reply to this station is missed); replies to other stations are skipped.
    """

    def __init__(self, settings: KafkaSettings, send: Send, station_id: str):
        self.settings = settings
        self.send = send
        self.station_id = station_id
        self._waiting: dict[str, asyncio.Future[DacReply]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start reading replies (once; later calls return at once)."""
        async with self._lock:
            if self._consumer is not None:
                return
            # Every partition, positioned at its end now: a reply sent after this is seen.
            consumer = await kafka.topic_reader(self.settings, DAC_REPLIES, "end")
            self._consumer = consumer
            self._reader = asyncio.create_task(self._read(consumer))

    async def stop(self) -> None:
        """Stop reading replies."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await kafka.stop_reader(consumer)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: keep waiting; requesters time out
                log.warning("reading DAC replies failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    self._deliver(record.value or b"")

    def _deliver(self, raw: bytes) -> None:
        try:
            head = json.loads(raw)
            if head.get("station_id") != self.station_id:
                return
            reply = decode(raw, DacReply)
        except (ValueError, InvalidInput):
            return  # not ours to judge: the signer's output is checked when it is used
        future = self._waiting.get(reply.request_id)
        if future is not None and not future.done():
            future.set_result(reply)

    async def request(self, req: DacRequest, timeout: float) -> DacReply:
        """Send one request and wait for its reply; _Retry after `timeout` seconds."""
        try:
            await self.start()
        except StackError as exc:  # Kafka away: this attempt fails, the next may not
            raise _Retry(f"cannot read DAC replies: {exc}") from None
        future: asyncio.Future[DacReply] = asyncio.get_running_loop().create_future()
        self._waiting[req.request_id] = future
        try:
            try:  # the request is sent whole (acknowledged), then the signer has `timeout`
                async with asyncio.timeout(max(timeout, SEND_TIMEOUT_S)):
                    await self.send([Emit(DAC_REQUESTS, req.device_id, req)])
            except TimeoutError:
                raise _Retry(
                    f"could not send the CSR to Kafka within {SEND_TIMEOUT_S:g}s"
                ) from None
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise _Retry(f"the signer did not answer within {timeout:g}s") from None
        finally:
            self._waiting.pop(req.request_id, None)


class DeviceKeys:
    """Binds device-born keys on one station (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        exchange: DacExchange | None,
        *,
        station_id: str,
        line: str,
        csr_cmd: str | None,
        cert_cmd: str | None,
        port: str | None,
        dac_timeout: float = DEFAULT_DAC_TIMEOUT_S,
        command_timeout: float = 120.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
    ):
        self.store = store
        self.exchange = exchange
        self.station_id = station_id
        self.line = line
        self.csr_cmd = csr_cmd
        self.cert_cmd = cert_cmd
        self.port = port
        self.dac_timeout = dac_timeout
        self.command_timeout = command_timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._modes: dict[str, str] = {}  # order_id -> dac_storage (order.json is write-once)

    async def applies(self, msg: ImageReady) -> bool:
        """Whether the image's order is dac_storage device-key."""
        mode = self._modes.get(msg.order_id)
        if mode is None:
            order = await objects.read_order_fields(self.store, msg.order_id)
            mode = "factory-nvs" if order is None else order.dac_storage or ""
            self._modes[msg.order_id] = mode
        return mode == "device-key"

    async def refuse_before_flash(self, msg: ImageReady) -> str | None:
        """Why this station must not flash the image (a device-key order, and no --csr-cmd /
        --cert-cmd to bind its key), or None."""
        if self.csr_cmd is not None and self.cert_cmd is not None and self.exchange is not None:
            return None
        if not await self.applies(msg):
            return None
        return "order is dac_storage device-key: this station has no --csr-cmd and --cert-cmd"

    async def bind(self, msg: ImageReady, mac: str, chip: str | None) -> dict[str, str]:
        """For a device-key device: its DAC written, as {dac_serial, dac_sha256}; {} otherwise.

        DeviceKeyFailed (one line) when it cannot be bound.
        """
        if not await self.applies(msg):
            return {}
        if self.exchange is None or self.csr_cmd is None or self.cert_cmd is None:
            raise DeviceKeyFailed(
                "order is dac_storage device-key: this station needs --csr-cmd and --cert-cmd"
            )
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 2), MAX_BACKOFF_S))
            try:
                return await self._once(msg, mac, chip)
            except _Retry as exc:
                last = str(exc)
                log.info(
                    "device-key attempt %d failed: %s",
                    attempt,
                    last,
                    extra={"order_id": msg.order_id, "device_id": msg.device_id},
                )
        raise DeviceKeyFailed(f"{last} (after {self.max_attempts} attempts)")

    async def _once(self, msg: ImageReady, mac: str, chip: str | None) -> dict[str, str]:
        assert self.exchange is not None and self.csr_cmd is not None
        values = {
            "port": self.port,
            "device_id": msg.device_id,
            "serial_num": msg.serial_num,
            "chip": chip,
            "mac": mac,
        }
        argv = _rendered("csr_cmd", self.csr_cmd, CSR_PLACEHOLDERS, values)
        output = await run_command("csr command", argv, self.command_timeout)
        try:
            checked = csr.check_csr(csr.extract_csr_pem(output))
        except InvalidInput as exc:
            raise DeviceKeyFailed(_message(exc)) from None
        req = DacRequest(
            request_id=uuid.uuid4().hex,
            order_id=msg.order_id,
            device_id=msg.device_id,
            index=msg.index,
            serial_num=msg.serial_num,
            station_id=self.station_id,
            line=self.line,
            csr_pem=checked.pem,
        )
        reply = await self.exchange.request(req, self.dac_timeout)
        if reply.status != "issued":
            raise DeviceKeyFailed(f"signer refused the CSR: {reply.reason}")
        dac_der, pai_der = _checked_reply(reply, checked, msg)
        await self._write(msg, dac_der, pai_der)
        return {"dac_serial": reply.dac_serial, "dac_sha256": hashlib.sha256(dac_der).hexdigest()}

    async def _write(self, msg: ImageReady, dac_der: bytes, pai_der: bytes) -> None:
        assert self.cert_cmd is not None
        workdir = Path(tempfile.mkdtemp(prefix="matterfab-dac-"))
        try:
            files = {
                "dac": ("dac.der", dac_der),
                "pai": ("pai.der", pai_der),
                "secure_cert": (
                    "esp_secure_cert.bin",
                    secure_cert.build_certs_only(dac_der, pai_der),
                ),
            }
            values: dict[str, Any] = {
                "device_id": msg.device_id,
                "port": self.port,
                "serial_num": msg.serial_num,
            }
            for name, (file_name, data) in files.items():
                (workdir / file_name).write_bytes(data)
                values[name] = str(workdir / file_name)
            argv = _rendered("cert_cmd", self.cert_cmd, CERT_PLACEHOLDERS, values)
            await run_command("cert command", argv, self.command_timeout)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _rendered(
    field: str, template: str, allowed: tuple[str, ...], values: Mapping[str, Any]
) -> list[str]:
    try:
        return render(field, template, allowed, values)
    except InvalidInput as exc:
        raise DeviceKeyFailed(_message(exc)) from None


def _checked_reply(
    reply: DacReply, checked: csr.CheckedCsr, msg: ImageReady
) -> tuple[bytes, bytes]:
    """The reply's DAC and PAI, after checking the DAC is over the device's key and chains."""
    try:
        dac_der = base64.b64decode(reply.dac_b64, validate=True)
        pai_der = base64.b64decode(reply.pai_b64, validate=True)
        dac = x509.load_der_x509_certificate(dac_der)
        pai = x509.load_der_x509_certificate(pai_der)
        attestation.verify_dac(dac, pai, vendor_id=msg.vendor_id, product_id=msg.product_id)
    except (ValueError, AttestationError) as exc:
        raise DeviceKeyFailed(f"the signer's DAC does not verify: {exc}") from None
    if not csr.dac_over_key(dac_der, checked.public_key_raw):
        raise DeviceKeyFailed("the signer's DAC is not over the device's key")
    return dac_der, pai_der


def _message(exc: InvalidInput) -> str:
    return str(exc.errors[0]) if exc.errors else str(exc)


def for_station(settings: Any, store: ObjectStore, exchange: DacExchange | None) -> DeviceKeys:
    """The DeviceKeys of a station's settings (`StationSettings`)."""
    return DeviceKeys(
        store,
        exchange,
        station_id=settings.station_id,
        line=settings.line,
        csr_cmd=settings.csr_cmd,
        cert_cmd=settings.cert_cmd,
        port=settings.port,
        dac_timeout=settings.dac_timeout,
        command_timeout=settings.timeout,
        max_attempts=settings.max_attempts,
        backoff=settings.backoff,
    )
