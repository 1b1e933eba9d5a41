"""The DACs of a device-key order's devices, as `order fetch` and `verify` read them.

An order's record of issued device-key DACs is the signer's write-once DAC records
(`orders/<id>/device-dacs/<index>/<generation>.json`, messages/dac_requests.py); a device
*received* its DAC when its final station record (`orders/<id>/station/<index>.json`, written
once) says flashed with that DAC's serial and sha256 (also in `bindings.csv`). Only such DACs
are fetched as `devices/<index>/dac.der`; a DAC issued to a device the station then could not
write is listed nowhere else, like in the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509

from matterfab.errors import AttestationError
from matterfab.matter import attestation
from matterfab.messages import StationResult
from matterfab.messages.base import index_str
from matterfab.messages.codec import decode
from matterfab.messages.dac_requests import DeviceKeyDac, device_dacs_prefix
from matterfab.messages.station import station_record_key
from matterfab.objectstore import Store


@dataclass(frozen=True)
class BoundDac:
    """A device-key device's DAC as its station bound it (or why it cannot be trusted)."""

    index: int
    device_id: str
    dac_serial: str
    der: bytes | None  # None: see `problem`
    problem: str | None = None


async def bound_dacs(store: Store, order_id: str, quantity: int) -> list[BoundDac]:
    """Every device of the order that a station reports bound with a DAC, by index."""
    sem = asyncio.Semaphore(32)

    async def one(index: int) -> BoundDac | None:
        async with sem:
            raw = await store.get_or_none(station_record_key(order_id, index))
            if raw is None:
                return None
            result = decode(raw, StationResult)
            if result.status != "flashed" or not result.dac_serial:
                return None
            keys = await store.list_keys(device_dacs_prefix(order_id, index))
            for key in sorted(keys, reverse=True):
                record = decode(await store.get(key), DeviceKeyDac)
                if record.dac_serial != result.dac_serial:
                    continue
                der = base64.b64decode(record.dac_b64)
                if hashlib.sha256(der).hexdigest() != (result.dac_sha256 or record.dac_sha256):
                    problem = f"the DAC {record.dac_serial} differs from the one the station wrote"
                    return BoundDac(index, result.device_id, result.dac_serial, None, problem)
                return BoundDac(index, result.device_id, result.dac_serial, der)
            problem = f"bound with DAC {result.dac_serial}, which the signer never issued to it"
            return BoundDac(index, result.device_id, result.dac_serial, None, problem)

    found = await asyncio.gather(*(one(i) for i in range(quantity)))
    return [b for b in found if b is not None]


def audit_bound(
    bound: BoundDac,
    pai: x509.Certificate | None,
    paa: x509.Certificate | None,
    vendor_id: int,
    product_id: int,
) -> list[str]:
    """Problems with one bound DAC: the record, its serial, its chain to the PAI and PAA."""
    if bound.der is None:
        return [bound.problem or "no DAC"]
    try:
        dac = x509.load_der_x509_certificate(bound.der)
    except ValueError:
        return ["dac.der does not parse"]
    problems = []
    if attestation.serial_hex(dac.serial_number) != bound.dac_serial:
        problems.append("dac.der's serial differs from the bound dac_serial")
    if pai is None:
        return [*problems, "no PAI in the catalogue to check the DAC against"]
    try:
        attestation.verify_dac(dac, pai, vendor_id=vendor_id, product_id=product_id)
        if paa is not None:
            attestation.verify_chain(dac, pai, paa)
    except AttestationError as exc:
        problems.append(f"attestation chain: {exc}")
    return problems


def dac_path(index: int) -> str:
    """Where `order fetch` writes a bound DAC, relative to its folder."""
    return f"devices/{index_str(index)}/dac.der"
