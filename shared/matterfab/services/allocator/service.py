"""The allocator: validates work orders and hands out one identity per device.

decode → validate (schema, cross-field rules, profile catalogue) → claim identities and counter
ranges in the product's registry (a conflicting order is rejected, nothing of it stored) →
fix the order's lot size in its `claim.json` → allocate chunks write-once → emit `accepted`
and one `mfg.devices.allocated` record per lot (`LotAllocated`, keyed by its `lot_id`).
A redelivered or resubmitted order finds its objects and re-emits the same devices in the
same lots.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab import dac_pool, firmware, lots
from matterfab.catalogue import Catalogue
from matterfab.config import settings_problem
from matterfab.errors import FieldError, IntegrityError, InvalidInput, StackError, invalid
from matterfab.keywrap import KeyWrapper
from matterfab.lines import LINE_RE, LineCatalogue
from matterfab.matter import nvs
from matterfab.messages import (
    DEVICES_ALLOCATED,
    ORDER_EVENTS,
    ErrorItem,
    ManifestRef,
    OrderEvent,
    WorkOrder,
)
from matterfab.messages.base import DEFAULT_LINE, ORDER_ID_RE, order_key
from matterfab.messages.codec import decode_json, encode, validation_errors
from matterfab.messages.lots import LotAllocated
from matterfab.runtime import Emit, Send
from matterfab.s3 import ObjectStore
from matterfab.services.allocator import allocation, sizing
from matterfab.services.allocator.claim_chain import ClaimChains, OrderConflict

log = logging.getLogger(__name__)


class LotSettings(BaseSettings):
    """How big the lots of a new order are (env `MATTERFAB_LOT_MAX_DEVICES`, `…_SECONDS`).

    Read when an order is accepted and stored in its `claim.json`: changing them later never
    re-cuts an accepted order, so a re-driven order's lots are the devices they always were.
    """

    model_config = SettingsConfigDict(
        env_prefix="MATTERFAB_LOT_", extra="ignore", env_ignore_empty=True
    )

    max_devices: int = Field(lots.MAX_DEVICES, ge=1, le=lots.MAX_DEVICES)
    seconds: float = Field(lots.TARGET_S, gt=0, description="Build work per lot, in seconds")

    def lot_size(self, order: WorkOrder) -> int:
        """Devices per lot for a new order."""
        return lots.lot_size(order.commissioning.iteration_count, self.seconds, self.max_devices)


def load_lot_settings() -> LotSettings:
    """The lot settings from the environment; one line naming a bad variable otherwise."""
    try:
        return LotSettings()
    except ValidationError as exc:
        raise StackError(settings_problem(exc, "MATTERFAB_LOT_")) from None


@dataclass
class Submission:
    """A work order as received: the parsed order, or the errors that stop it."""

    order_id: str
    order: WorkOrder | None
    errors: list[FieldError] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def parse_submission(raw: bytes) -> Submission:
    """Parse a work order; raises InvalidInput only when it has no usable order_id."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidInput([FieldError("$", "must be a JSON object")])
    order_id = data.get("order_id")
    if not isinstance(order_id, str) or not ORDER_ID_RE.match(order_id):
        raise InvalidInput([FieldError("order_id", "is required: 1..64 of [A-Za-z0-9._-]")])
    if data.get("type") != "work-order/v1":
        got = data.get("type")
        rule = (
            "is required (expected 'work-order/v1')"
            if got is None
            else f"unknown message type {str(got)[:64]!r}; expected 'work-order/v1'"
        )
        return Submission(order_id, None, [FieldError("type", rule)], data)
    try:
        order = WorkOrder.model_validate(data)
    except ValidationError as exc:
        return Submission(order_id, None, validation_errors(exc), data)
    errors = order.cross_field_errors()
    if not errors:
        # Reject up front what the builder would fail on for every device (partition too
        # small, extra values that do not encode), before any DAC is issued.
        errors = sizing.order_nvs_errors(order)
    return Submission(order_id, order, errors, data)


class Allocator:
    """Handles one work order at a time.

    `handle` returns the order events of an order it stops (rejected, already completed); an
    accepted order's `accepted` event and devices are published while it runs, chunk by chunk,
    through `send`: the service's `runtime.Publisher.send` (here through the re-drive
    watch), acknowledged before `handle` returns and so before the offset is committed.
    """

    def __init__(
        self,
        store: ObjectStore,
        wrapper: KeyWrapper,
        send: Send,
        lot_settings: LotSettings | None = None,
    ):
        self.store = store
        self.wrapper = wrapper
        self.send = send
        self.lots = lot_settings if lot_settings is not None else load_lot_settings()
        self.catalogue = Catalogue(store)
        self.lines = LineCatalogue(store)
        self.claims = ClaimChains(store)
        # Called with an order_id once all its devices are sent (the re-drive watch).
        self.on_emitted: Callable[[str], Awaitable[None]] | None = None

    async def profile_errors(
        self, data: dict[str, Any], order: WorkOrder | None
    ) -> list[FieldError]:
        """Check the attestation profile exists and matches the product's vendor and product."""
        name = data.get("attestation_profile")
        if not isinstance(name, str) or not name:
            return []
        summary = await self.catalogue.get(name)
        if summary is None:
            return [
                FieldError(
                    "attestation_profile",
                    f"unknown attestation profile {name[:64]!r} (not configured on the signer)",
                )
            ]
        errors = []
        if order is not None:
            if summary.get("vendor_id") not in (None, order.product.vendor_id):
                errors.append(
                    FieldError(
                        "product.vendor_id",
                        f"must match the profile's PAI vendor ID 0x{summary['vendor_id']:04X}",
                    )
                )
            if summary.get("product_id") not in (None, order.product.product_id):
                errors.append(
                    FieldError(
                        "product.product_id",
                        f"must match the profile's PAI product ID 0x{summary['product_id']:04X}",
                    )
                )
            if order.dac_storage != "on-module" and not summary.get("issues_dacs", True):
                errors.append(
                    FieldError(
                        "attestation_profile",
                        f"profile {name[:64]!r} is CD-only (issues no DACs): it serves only "
                        f"dac_storage on-module orders, not {order.dac_storage}",
                    )
                )
        return errors

    async def line_errors(self, data: dict[str, Any]) -> list[FieldError]:
        """Check the order's production line is registered (its key seals the order)."""
        name = data.get("line", DEFAULT_LINE)
        if not isinstance(name, str) or not LINE_RE.match(name):
            return []  # the schema names that rule
        if await self.lines.current(name) is None:
            return [
                FieldError(
                    "line",
                    f"unknown production line {name!r} (register it with `matterfab line "
                    "create` or `line add`)",
                )
            ]
        return []

    async def handle(self, sub: Submission) -> list[Emit]:
        """Validate, allocate and emit; returns the order events to emit last."""
        errors = sub.errors + await self.profile_errors(sub.data, sub.order)
        errors += await self.line_errors(sub.data)
        if sub.order is not None and not sub.errors:
            errors += await firmware.check_order(self.store, sub.order)  # bundle known, intact
        if errors or sub.order is None:
            return [self._event(sub.order_id, "rejected", errors=errors)]
        order = sub.order
        body = encode(order)
        stored = await self.store.get_or_none(order_key(order.order_id, "order.json"))
        if stored is not None and stored != body:
            return [self._reused(order.order_id)]
        if stored is None and order.dac_source == "imported":
            left = len(await dac_pool.unused(self.store, order.attestation_profile))
            if order.quantity > left:
                rule = (
                    f"imported needs {order.quantity} unused imported DACs; profile "
                    f"{order.attestation_profile!r} has {left} left (matterfab dac import)"
                )
                return [
                    self._event(order.order_id, "rejected", errors=[FieldError("dac_source", rule)])
                ]
        manifest = await self.store.get_or_none(order_key(order.order_id, "manifest.json"))
        if manifest is not None:
            # Already made: say so again rather than making anything twice.
            ref = ManifestRef(
                key=order_key(order.order_id, "manifest.json"),
                sha256=hashlib.sha256(manifest).hexdigest(),
            )
            return [
                self._event(
                    order.order_id,
                    "completed",
                    ready=order.quantity,
                    manifest=ref,
                    quantity=order.quantity,
                )
            ]
        # The registry decides before anything of the order is stored: a rejected order
        # leaves no claim and no order.json behind, so a corrected one can use its order_id.
        try:
            record = await self.claims.claim(order, hashlib.sha256(body).hexdigest())
        except OrderConflict as exc:
            return [self._event(order.order_id, "rejected", errors=exc.errors)]
        try:
            await self.store.put_once(
                order_key(order.order_id, "order.json"), body, "application/json"
            )
        except IntegrityError:
            return [self._reused(order.order_id)]
        claim = await self._claim(order, record)
        await self.drive(order, claim)
        return []

    async def drive(self, order: WorkOrder, claim: allocation.Claim) -> None:
        """Emit `accepted` and every lot of an accepted order (from its stored chunks)."""
        await self.send([self._event(order.order_id, "accepted", quantity=order.quantity)])
        size = claim.lot_size_of(order)
        chunks = (order.quantity + allocation.CHUNK - 1) // allocation.CHUNK
        for chunk in range(chunks):
            devices = await self._chunk(order, claim, chunk)
            lot_messages = allocation.lot_messages(
                order, chunk, devices, size, line_key=claim.line_key
            )
            await self.send(lot_emits(lot_messages))
        log.info(
            "order allocated", extra={"order_id": order.order_id, "mf_quantity": order.quantity}
        )
        if self.on_emitted is not None:
            await self.on_emitted(order.order_id)

    async def _claim(self, order: WorkOrder, record: dict[str, Any]) -> allocation.Claim:
        """The order's own copy of its claim record's counter ranges, and its lot size."""
        key = order_key(order.order_id, "claim.json")
        existing = await self.store.get_or_none(key)
        if existing is not None:
            return allocation.Claim.from_json(json.loads(existing))
        claim = allocation.Claim(
            order.order_id,
            record["serial_start"],
            record["serial_count"],
            record["discriminator_start"],
            self.lots.lot_size(order),
            await self._line_key(order),
        )
        try:
            await self.store.put_once(key, json.dumps(claim.to_json()).encode(), "application/json")
        except IntegrityError:
            # Another instance allocated this order at the same time; its claim stands.
            return allocation.Claim.from_json(json.loads(await self.store.get(key)))
        return claim

    async def _line_key(self, order: WorkOrder) -> str:
        """The fingerprint of the order's line's current key (checked in `handle`)."""
        current = await self.lines.current(order.line)
        if current is None:  # unregistered since `handle` checked: refuse, naming the field
            raise invalid("line", f"unknown production line {order.line!r}")
        return current.fingerprint

    async def _chunk(
        self, order: WorkOrder, claim: allocation.Claim, chunk: int
    ) -> list[dict[str, Any]]:
        key = order_key(order.order_id, f"allocation/{chunk:05d}.json")
        existing = await self.store.get_or_none(key)
        if existing is not None:
            return list(json.loads(existing))

        def wrap_nvs_keys(dev_id: str) -> str:
            return self.wrapper.wrap(nvs.generate_xts_keys(), f"nvs-keys:{dev_id}")

        devices = allocation.allocate_chunk(order, claim, chunk, wrap_nvs_keys)
        try:
            await self.store.put_once(key, json.dumps(devices).encode(), "application/json")
        except IntegrityError:
            return list(json.loads(await self.store.get(key)))
        return devices

    async def stored_claim(self, order_id: str) -> allocation.Claim | None:
        """The order's `claim.json`, if it was written."""
        raw = await self.store.get_or_none(order_key(order_id, "claim.json"))
        return None if raw is None else allocation.Claim.from_json(json.loads(raw))

    @classmethod
    def _reused(cls, order_id: str) -> Emit:
        return cls._event(
            order_id,
            "rejected",
            errors=[FieldError("order_id", "is already used by a different work order")],
        )

    @staticmethod
    def _event(order_id: str, status: str, errors: Sequence[FieldError] = (), **kw: Any) -> Emit:
        event = OrderEvent(
            order_id=order_id,
            status=status,
            errors=[ErrorItem.of(e) for e in errors],
            **kw,
        )
        return Emit(ORDER_EVENTS, order_id, event)


def lot_emits(messages: Sequence[LotAllocated]) -> list[Emit]:
    """The records of some lots on `mfg.devices.allocated`, each keyed by its `lot_id`."""
    return [Emit(DEVICES_ALLOCATED, m.lot_id, m) for m in messages]
