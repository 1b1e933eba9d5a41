"""The signer's device-key side: DACs over keys the devices made, asked for on the line.

CSR in (`mfg.dac.requests`, keyed by device_id) → check the order is device-key and the CSR's
self-signature and P-256 key (matter/csr.py) → the device's current DAC generation → claim the
public key for the product, write-once → sign (requests that arrive together are signed
together, `BatchSigner`: one HSM hand-off for all) → store the device's DAC record, write-once
→ reply (`mfg.dac.replies`). Every refusal is a reply with a one-line reason, never a dead
letter, so one bad CSR fails that device alone.

Uniqueness and idempotency are properties of two write-once objects (`put_if_absent`), so they
hold across any number of signer instances:
- `device-keys/<VID>/<PID>/<sha256 of the point>.json` (KeyClaim) names the one device that may
  hold a public key within a product: another device presenting it is refused, naming the
  holder.
- `orders/<id>/device-dacs/<index>/<generation>.json` (DeviceKeyDac) is *the* DAC of the
  device in that generation: a retry with the same key gets the stored DAC back (the same
  serial); a different key is refused, naming the DAC the device holds. Two signers racing
  for one device: one record wins and the loser replies with it (same key) or refuses.

The ledger lists a device-key DAC only once the station reports the device bound with that DAC
serial (`mfg.station-results`, final and flashed, `dac_serial` set): `handle_result` checks
the serial against the device's record and emits the ledger entry. A DAC that was issued but
never reached its device (the station timed out, the cert command failed) is therefore in no
ledger; a retry of the same device gets that same DAC back, so nothing leaks either way.
The signer never sees a private key: only the CSR's public point.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from matterfab.bucket import objects
from matterfab.errors import AttestationError, IntegrityError, InvalidInput
from matterfab.fleet.index import record_bound_dac
from matterfab.fleet.reissue import certify_generation
from matterfab.matter import attestation, csr
from matterfab.messages import DAC_LEDGER, DAC_REPLIES, LedgerDac, LedgerLot, ObjectRef
from matterfab.messages.codec import decode
from matterfab.messages.dac_requests import (
    DacReply,
    DacRequest,
    DeviceKeyDac,
    KeyClaim,
    device_dac_key,
    device_dacs_prefix,
    key_claim_key,
)
from matterfab.messages.station import StationResult
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore
from matterfab.services.signer.service import Signer

log = logging.getLogger(__name__)

JSON = "application/json"


class Refused(Exception):
    """A request this signer will not answer with a DAC; the message is the one-line reason."""


@dataclass(frozen=True)
class _Order:
    """What a DAC request needs of its order (from the write-once order.json)."""

    order_id: str
    quantity: int
    vendor_id: int
    product_id: int
    attestation_profile: str
    dac_storage: str


@dataclass
class _Job:
    """One DAC to sign in a batch."""

    public_key: ec.EllipticCurvePublicKey
    pai: x509.Certificate
    signer: attestation.PaiSigner
    vendor_id: int
    product_id: int
    not_after: datetime | None
    future: asyncio.Future[x509.Certificate]


class BatchSigner:
    """Signs the DACs asked for at about the same time together.

    Handlers of one batch of requests run concurrently; each queues its job and awaits it. The
    first queues a drain that runs once the loop has let the others queue theirs, and signs
    everything queued in one go: on the loop for in-process keys (~0.5 ms each), in one thread
    hand-off for an HSM.
    """

    def __init__(self) -> None:
        self._pending: list[_Job] = []
        self._drain: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches signed (for tests and the bench)

    async def sign(self, job_args: dict[str, Any]) -> x509.Certificate:
        """Queue one DAC and wait for it (AttestationError / InvalidInput as issue_dac_over)."""
        future: asyncio.Future[x509.Certificate] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(**job_args, future=future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the rest of the batch queue its jobs
        while self._pending:
            jobs, self._pending = self._pending, []
            self.batches.append(len(jobs))
            if all(isinstance(j.signer, attestation.InMemorySigner) for j in jobs):
                results = _sign_all(jobs)
            else:
                results = await asyncio.to_thread(_sign_all, jobs)
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


def _sign_all(jobs: Sequence[_Job]) -> list[x509.Certificate | BaseException]:
    now = datetime.now(UTC).replace(microsecond=0)
    out: list[x509.Certificate | BaseException] = []
    for j in jobs:
        try:
            out.append(
                csr.issue_dac_for_key(  # verified against the PAI before it is returned
                    public_key=j.public_key,
                    pai_cert=j.pai,
                    signer=j.signer,
                    vendor_id=j.vendor_id,
                    product_id=j.product_id,
                    not_before=now - timedelta(minutes=5),
                    not_after=j.not_after,
                )
            )
        except Exception as exc:  # each job fails alone; the handler decides what it means
            out.append(exc)
    return out


class DeviceKeyRecords:
    """The write-once objects behind device-key DACs (see above): the order a request is for,
    each device's DAC per generation, and the claims on public keys. What makes issuing unique
    and idempotent across signer instances; `DeviceKeyIssuer` decides and signs."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._orders: dict[str, _Order] = {}

    async def order(self, req: DacRequest) -> _Order:
        cached = self._orders.get(req.order_id)
        if cached is None:
            order = await objects.read_order_fields(self.store, req.order_id)
            if order is None:
                raise Refused(f"order {req.order_id} is unknown to the signer")
            product = order.product
            cached = _Order(
                order_id=req.order_id,
                quantity=order.quantity or 0,
                vendor_id=int(product.get("vendor_id", 0)),
                product_id=int(product.get("product_id", 0)),
                attestation_profile=order.attestation_profile or "",
                dac_storage=order.dac_storage or "factory-nvs",
            )
            self._orders[req.order_id] = cached
        if cached.dac_storage != "device-key":
            raise Refused(
                f"order {req.order_id} is dac_storage {cached.dac_storage}, not device-key"
            )
        if (
            not 0 <= req.index < cached.quantity
            or req.device_id != f"{req.order_id}/{req.index:07d}"
        ):
            raise Refused(f"{req.device_id} is not a device of order {req.order_id}")
        return cached

    async def current_generation(
        self, order: _Order, index: int
    ) -> tuple[int, DeviceKeyDac | None]:
        """The generation a request for device `index` is for, and the DAC it holds in it.

        THE RULE for a device's DAC generations lives here: a device has one DAC per
        generation, and a request is answered in the latest generation stored (or 0 when there
        is none). After `device reissue` (the old DAC revoked as superseded, a CertifyGrant for
        generation n written) the answer is (n, None): the device may present a new key.
        """
        first = await self.store.get_or_none(device_dac_key(order.order_id, index, 0))
        if first is None:  # the common case: one GET, no listing
            return 0, None
        keys = await self.store.list_keys(device_dacs_prefix(order.order_id, index))
        latest = max(keys)  # generations are zero-padded: lexical order is numeric order
        body = first if latest == device_dac_key(order.order_id, index, 0) else None
        record = decode(body or await self.store.get(latest), DeviceKeyDac)
        granted = await certify_generation(self.store, order.order_id, index)
        if granted is not None and granted > record.generation:
            return granted, None  # reissued: a new key for a new generation
        return record.generation, record

    async def claim(self, order: _Order, req: DacRequest, checked: csr.CheckedCsr) -> bool:
        """Claim the public key for this device within the product; False if already claimed."""
        claim = KeyClaim(
            vendor_id=order.vendor_id,
            product_id=order.product_id,
            public_key_sha256=checked.public_key_sha256,
            order_id=order.order_id,
            device_id=req.device_id,
            index=req.index,
        )
        key = key_claim_key(order.vendor_id, order.product_id, checked.public_key_sha256)
        return await self.store.put_if_absent(key, claim.model_dump_json().encode(), JSON)

    async def claimed_before(
        self, order: _Order, req: DacRequest, checked: csr.CheckedCsr, generation: int
    ) -> None:
        """The key was claimed before: Refused unless by this device, for no earlier DAC."""
        key = key_claim_key(order.vendor_id, order.product_id, checked.public_key_sha256)
        holder = decode(await self.store.get(key), KeyClaim)
        if holder.device_id != req.device_id:
            raise Refused(
                f"public key already certified for product "
                f"{order.vendor_id:04X}/{order.product_id:04X}: held by device {holder.device_id}"
            )
        # This device's own claim: an earlier attempt that stored no DAC, or (generation > 0)
        # a key it presented before; the key of an earlier DAC may not come back.
        for earlier in range(generation):
            raw = await self.store.get_or_none(device_dac_key(order.order_id, req.index, earlier))
            if raw is not None and decode(raw, DeviceKeyDac).public_key_sha256 == (
                checked.public_key_sha256
            ):
                raise Refused(f"public key was already used by {req.device_id} in an earlier DAC")

    async def store_dac(self, record: DeviceKeyDac) -> DeviceKeyDac:
        """Store `record` as the device's DAC of its generation, write-once: the DAC stored
        first wins (it comes back when it is over the same key, else Refused)."""
        key = device_dac_key(record.order_id, record.index, record.generation)
        if await self.store.put_if_absent(key, record.model_dump_json().encode(), JSON):
            return record
        # Another signer (or an earlier delivery) stored this generation first: that is the DAC.
        first = decode(await self.store.get(key), DeviceKeyDac)
        if first.public_key_sha256 != record.public_key_sha256:
            raise Refused(
                f"{record.device_id} already holds DAC {first.dac_serial} over another key"
            )
        return first

    async def bound(self, result: StationResult) -> tuple[DeviceKeyDac, str, bytes]:
        """The DAC record a station reported bound (its key and bytes); IntegrityError if the
        signer never issued that DAC to the device."""
        prefix = device_dacs_prefix(result.order_id, result.index)
        for key in sorted(await self.store.list_keys(prefix), reverse=True):
            body = await self.store.get(key)
            record = decode(body, DeviceKeyDac)
            if record.dac_serial == result.dac_serial:
                return record, key, body
        raise IntegrityError(
            f"{result.device_id} was reported bound with DAC {result.dac_serial} by "
            f"{result.station_id}, which the signer never issued to it"
        )


class DeviceKeyIssuer:
    """Answers DAC requests and enters bound device-key DACs in the ledger."""

    def __init__(self, signer: Signer, store: ObjectStore | None = None):
        self.signer = signer
        self.store = store or signer.store
        self.batch = BatchSigner()
        self.records = DeviceKeyRecords(self.store)
        # Half-seconds a bound DAC waits for the assembler to index its device (fleet index).
        self.index_waits = 20

    async def handle_request(self, req: DacRequest) -> list[Emit]:
        """One CSR: the device's DAC, or a refusal, as a reply to the waiting station."""
        try:
            record = await self._issue(req)
        except (Refused, InvalidInput, AttestationError) as exc:
            reason = _one_line(exc)
            log.warning(
                "DAC request refused: %s",
                reason,
                extra={"order_id": req.order_id, "device_id": req.device_id},
            )
            return [self._reply(req, "refused", reason=reason)]
        log.info(
            "device-key DAC sent",
            extra={"order_id": req.order_id, "device_id": req.device_id},
        )
        loaded = await self.signer.loaded_profile(record.attestation_profile)
        return [
            self._reply(
                req,
                "issued",
                dac_b64=record.dac_b64,
                pai_b64=loaded.pai_b64,
                dac_serial=record.dac_serial,
                dac_sha256=record.dac_sha256,
                generation=record.generation,
            )
        ]

    async def _issue(self, req: DacRequest) -> DeviceKeyDac:
        records = self.records
        order = await records.order(req)
        checked = csr.check_csr(req.csr_pem)  # InvalidInput: broken signature, not P-256
        # The device's DAC so far and the claim on the key, at once: a first request (nearly
        # every request) costs two S3 round trips before signing, not three.
        (generation, held), claimed = await asyncio.gather(
            records.current_generation(order, req.index), records.claim(order, req, checked)
        )
        if held is not None:
            if held.public_key_sha256 == checked.public_key_sha256:
                return held  # a retry (the station timed out, the cert command failed)
            raise Refused(f"{req.device_id} already holds DAC {held.dac_serial} over another key")
        if not claimed:
            await records.claimed_before(order, req, checked, generation)
        loaded = await self.signer.loaded_profile(order.attestation_profile)
        profile = loaded.profile
        not_after = (
            datetime.now(UTC) + timedelta(days=profile.dac_validity_days)
            if profile.dac_validity_days
            else None
        )
        cert = await self.batch.sign(
            {
                "public_key": checked.public_key,
                "pai": profile.require_pai(),
                "signer": loaded.signer,
                "vendor_id": order.vendor_id,
                "product_id": order.product_id,
                "not_after": not_after,
            }
        )
        der = cert.public_bytes(Encoding.DER)
        record = DeviceKeyDac(
            order_id=order.order_id,
            device_id=req.device_id,
            index=req.index,
            generation=generation,
            attestation_profile=order.attestation_profile,
            vendor_id=order.vendor_id,
            product_id=order.product_id,
            public_key_sha256=checked.public_key_sha256,
            dac_serial=attestation.serial_hex(cert.serial_number),
            dac_b64=base64.b64encode(der).decode(),
            dac_sha256=hashlib.sha256(der).hexdigest(),
            issued_at=datetime.now(UTC),
            request_id=req.request_id,
        )
        return await self.records.store_dac(record)

    def _reply(self, req: DacRequest, status: str, **fields: Any) -> Emit:
        reply = DacReply.model_validate(
            {
                "request_id": req.request_id,
                "order_id": req.order_id,
                "device_id": req.device_id,
                "index": req.index,
                "station_id": req.station_id,
                "status": status,
                **fields,
            }
        )
        return Emit(DAC_REPLIES, req.device_id, reply)

    async def handle_result(self, result: StationResult) -> list[Emit]:
        """A station bound a device-key device: enter its DAC in the ledger (else nothing)."""
        if result.status != "flashed" or not result.final or not result.dac_serial:
            return []
        record, key, body = await self.records.bound(result)
        # Findable and revocable from now on (fleet index), then in the ledger.
        indexed = await record_bound_dac(
            self.store, record.device_id, record.generation, record.dac_serial, self.index_waits
        )
        if not indexed:
            log.warning(
                "bound DAC %s not indexed: the device's labels.lot (its image record) is "
                "not readable yet (`matterfab device reindex %s` adds it later)",
                record.dac_serial,
                record.order_id,
                extra={"order_id": record.order_id, "device_id": record.device_id},
            )
        return [self._ledger(record, key, body)]

    def _ledger(self, record: DeviceKeyDac, key: str, body: bytes) -> Emit:
        cert = x509.load_der_x509_certificate(base64.b64decode(record.dac_b64))
        pai_skid = cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
        entry = LedgerLot(
            order_id=record.order_id,
            lot_id=record.device_id,
            attestation_profile=record.attestation_profile,
            vendor_id=record.vendor_id,
            product_id=record.product_id,
            pai_skid=(pai_skid or b"").hex(),
            dacs_lot=ObjectRef(key=key, sha256=hashlib.sha256(body).hexdigest(), size=len(body)),
            dacs=[
                LedgerDac(
                    dac_serial=record.dac_serial,
                    device_id=record.device_id,
                    index=record.index,
                    subject=cert.subject.rfc4514_string(),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    dac_sha256=record.dac_sha256,
                    issued_at=record.issued_at,
                )
            ],
        )
        return Emit(DAC_LEDGER, record.device_id, entry)


def _one_line(exc: BaseException) -> str:
    text = str(exc.errors[0]) if isinstance(exc, InvalidInput) and exc.errors else str(exc)
    return " ".join(text.split())[:300]
