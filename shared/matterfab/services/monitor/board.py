"""The monitor's view of orders: the latest state per order, from `mfg.order-events`.

Pure and synchronous (no Kafka here): the monitor feeds it decoded OrderEvents and reads
snapshots. It holds at most `capacity` orders, dropping the one updated least recently, so a
monitor that replays 30 days of events stays small.

Events of one order share a partition (keyed by `order_id`), so they arrive in order; but
at-least-once delivery means an older event can be replayed after a newer one (a service that
restarts re-emits). The board therefore never lets a replayed event move an order backwards:
counts only grow and a final status is not undone by a late `progress`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from matterfab.messages import OrderEvent

DEFAULT_CAPACITY = 1000
# A later status never gives way to an earlier one (a replayed `progress` after `completed`).
STATUS_RANK = {"accepted": 0, "progress": 1, "completed": 2, "failed": 2, "rejected": 2}
FINAL = frozenset({"completed", "failed", "rejected"})


@dataclass
class OrderView:
    """What the status page shows of one order."""

    order_id: str
    status: str
    quantity: int = 0
    ready: int = 0
    flashed: int = 0
    failed: int = 0
    bound: int = 0
    scrapped: int = 0
    revoked: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    manifest_key: str | None = None
    at: datetime | None = None

    @property
    def percent(self) -> int:
        """Images ready as a whole percentage, rounded down (100 only when every one is)."""
        if self.status == "completed":
            return 100
        if self.quantity <= 0:
            return 0
        return min(100, self.ready * 100 // self.quantity)

    @property
    def ratio(self) -> float:
        """Images ready / quantity in 0..1 (1 once completed)."""
        if self.status == "completed":
            return 1.0
        if self.quantity <= 0:
            return 0.0
        return min(1.0, self.ready / self.quantity)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`/api/status`)."""
        return {
            "order_id": self.order_id,
            "status": self.status,
            "quantity": self.quantity,
            "ready": self.ready,
            "flashed": self.flashed,
            "failed": self.failed,
            "bound": self.bound,
            "scrapped": self.scrapped,
            "revoked": self.revoked,
            "percent": self.percent,
            "errors": self.errors,
            "manifest": self.manifest_key,
            "at": self.at.isoformat() if self.at else None,
        }


class OrderBoard:
    """The latest state of the most recently updated `capacity` orders."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._orders: OrderedDict[str, OrderView] = OrderedDict()
        self.events_seen = 0

    def __len__(self) -> int:
        return len(self._orders)

    def get(self, order_id: str) -> OrderView | None:
        """The order's view, or None if the board does not hold it."""
        return self._orders.get(order_id)

    def apply(self, event: OrderEvent) -> list[str]:
        """Fold one event into the board; returns the order ids evicted to stay in capacity."""
        self.events_seen += 1
        view = self._orders.get(event.order_id)
        if view is None:
            view = OrderView(order_id=event.order_id, status=event.status)
            self._orders[event.order_id] = view
        else:
            self._orders.move_to_end(event.order_id)
        if STATUS_RANK[event.status] >= STATUS_RANK.get(view.status, 0):
            view.status = event.status
        view.quantity = max(view.quantity, event.quantity)
        view.ready = max(view.ready, event.ready)
        view.flashed = max(view.flashed, event.flashed)
        view.failed = max(view.failed, event.failed)
        view.bound = max(view.bound, event.bound)
        view.scrapped = max(view.scrapped, event.scrapped)
        view.revoked = max(view.revoked, event.revoked)
        if event.errors:
            view.errors = [{"field": e.field, "message": e.message} for e in event.errors]
        if event.manifest is not None:
            view.manifest_key = event.manifest.key
        if view.at is None or event.at > view.at:
            view.at = event.at
        evicted = []
        while len(self._orders) > self.capacity:
            oldest, _ = self._orders.popitem(last=False)
            evicted.append(oldest)
        return evicted

    def orders(self) -> list[OrderView]:
        """Every order held, most recently updated first."""
        return list(reversed(self._orders.values()))
