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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from matterfab import dac_pool, firmware
from matterfab.catalogue import Catalogue
from matterfab.errors import FieldError, InvalidInput
from matterfab.lines import LINE_RE
from matterfab.messages import WorkOrder
from matterfab.messages.base import DEFAULT_LINE, ORDER_ID_RE
from matterfab.messages.codec import decode_json, encode, validation_errors
from matterfab.runtime import Emit, Send
from matterfab.services.allocator import sizing
from matterfab.services.allocator.claim_chain import OrderConflict
from matterfab.services.allocator.order_book import OrderBook
from matterfab.services.allocator.sending import order_event, send_order

log = logging.getLogger(__name__)


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
    through `send` (the service's `runtime.Publisher.send`, counted by the re-driver),
    acknowledged before `handle` returns and so before the offset is committed. `on_sent` is
    told each order whose devices were all sent (the re-driver records where the log ended).
    """

    def __init__(
        self,
        book: OrderBook,
        send: Send,
        on_sent: Callable[[str], Awaitable[None]] | None = None,
    ):
        self.book = book
        self.store = book.store
        self.send = send
        self.on_sent = on_sent
        self.catalogue = Catalogue(book.store)
        self.lines = book.lines

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
            return [order_event(sub.order_id, "rejected", errors=errors)]
        order = sub.order
        body = encode(order)
        stored = await self.book.order_body(order.order_id)
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
                    order_event(order.order_id, "rejected", errors=[FieldError("dac_source", rule)])
                ]
        ref = await self.book.manifest_ref(order.order_id)
        if ref is not None:
            # Already made: say so again rather than making anything twice.
            return [
                order_event(
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
            record = await self.book.claims.claim(order, hashlib.sha256(body).hexdigest())
        except OrderConflict as exc:
            return [order_event(order.order_id, "rejected", errors=exc.errors)]
        if not await self.book.put_order(order.order_id, body):
            return [self._reused(order.order_id)]
        claim = await self.book.settle_claim(order, record)
        await send_order(self.book, self.send, order, claim)
        if self.on_sent is not None:
            await self.on_sent(order.order_id)
        return []

    @staticmethod
    def _reused(order_id: str) -> Emit:
        return order_event(
            order_id,
            "rejected",
            errors=[FieldError("order_id", "is already used by a different work order")],
        )
