"""Pure identity registry of one product: which serial numbers and unique IDs orders hold.

Serial numbers are compared as strings (the same string is the same serial), but stored and
checked as ranges so that a million-device pattern costs one entry, not a million. Every
serial string has one canonical form, `(head, digits, number)`: `head` is the string without
its trailing ASCII digit run, `digits` the length of that run, `number` its value; so
`SC-0003` is `("SC-", 4, 3)` and `SC1005` is `("SC", 4, 1005)`. The mapping is a bijection
(leading zeros are part of `digits`), so two serials are equal exactly when their canonical
forms are. A pattern `{prefix, start, digits}` (and the per-product counter, a pattern with
prefix `VVVVPPPP` and 8 digits) maps to canonical runs: a prefix that ends in digits joins
them to the number (`{prefix "SC1", digits 3}` gives `("SC", 4, 1000 + n)`), and a counter
value wider than its digits starts a new run. Explicit values are sorted into runs too, so
`SC-0001`..`SC-1000` listed one by one is one run.

No I/O here: the allocator's claim chain (`claim_chain.py`) feeds claim records in and appends
an order's claim only when `conflicts` finds nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from matterfab.errors import FieldError
from matterfab.messages.work_order import MAX_REPORTED_ERRORS, WorkOrder

DIGITS = "0123456789"  # ASCII only: what f"{n:0Nd}" writes


@dataclass(frozen=True, order=True)
class Run:
    """Serials `head + f"{n:0{digits}d}"` for n in lo..hi (digits 0: the single string head)."""

    head: str
    digits: int
    lo: int
    hi: int

    @property
    def space(self) -> tuple[str, int]:
        """The (head, digits) pair: runs in different spaces never share a serial."""
        return (self.head, self.digits)

    def serial(self, n: int) -> str:
        """The serial string of canonical number `n` in this run's space."""
        return fmt(self.head, self.digits, n)

    def to_json(self) -> list[Any]:
        """Compact JSON form stored in claim records: [head, digits, lo, hi]."""
        return [self.head, self.digits, self.lo, self.hi]

    @classmethod
    def from_json(cls, v: list[Any]) -> Run:
        """Inverse of to_json."""
        return cls(str(v[0]), int(v[1]), int(v[2]), int(v[3]))


def canonical(serial: str) -> tuple[str, int, int]:
    """The canonical (head, digits, number) of a serial string."""
    head = serial.rstrip(DIGITS)
    tail = serial[len(head) :]
    return head, len(tail), int(tail) if tail else 0


def fmt(head: str, digits: int, n: int) -> str:
    """Inverse of canonical."""
    return head + (f"{n:0{digits}d}" if digits else "")


def pattern_runs(prefix: str, start: int, end: int, digits: int) -> list[tuple[Run, int]]:
    """Canonical runs of `prefix + f"{n:0{digits}d}"` for n in start..end, each with its first n.

    A value wider than `digits` (only the counter gets there) starts a new run per width.
    """
    head = prefix.rstrip(DIGITS)
    tail = prefix[len(head) :]
    out: list[tuple[Run, int]] = []
    a = start
    while a <= end:
        width = max(digits, len(str(a)))
        b = min(end, 10**width - 1)
        base = int(tail) * 10**width if tail else 0
        out.append((Run(head, len(tail) + width, base + a, base + b), a))
        a = b + 1
    return out


def explicit_runs(serials: Iterable[str]) -> list[Run]:
    """Distinct serial strings as the fewest canonical runs."""
    points = sorted({canonical(s) for s in serials})
    return merge_points(points)


def merge_points(points: list[tuple[str, int, int]]) -> list[Run]:
    """Sorted distinct canonical points as maximal runs."""
    out: list[Run] = []
    for head, digits, n in points:
        last = out[-1] if out else None
        if last is not None and last.space == (head, digits) and last.hi + 1 == n and digits:
            out[-1] = Run(head, digits, last.lo, n)
        else:
            out.append(Run(head, digits, n, n))
    return out


@dataclass(frozen=True)
class Holding:
    """Values of a run that an existing order holds: canonical lo..hi in `run`'s space."""

    run: Run
    lo: int
    hi: int
    order_id: str

    def describe(self) -> str:
        """`SC-0003..SC-0004 already used by order A` (or one value)."""
        first, last = self.run.serial(self.lo), self.run.serial(self.hi)
        values = first if self.lo == self.hi else f"{first}..{last}"
        return f"{values} already used by order {self.order_id}"


@dataclass
class _Space:
    """Disjoint held intervals of one (head, digits) space, sorted by lo."""

    los: list[int] = field(default_factory=list)
    his: list[int] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    pending: list[tuple[int, int, str]] = field(default_factory=list)

    def add(self, items: list[tuple[int, int, str]]) -> None:
        # Sorted lazily, at the next query: loading a chain of N records sorts once, not N times.
        self.pending.extend(items)

    def _settle(self) -> None:
        if self.pending:
            merged = sorted([*zip(self.los, self.his, self.owners, strict=True), *self.pending])
            self.los = [m[0] for m in merged]
            self.his = [m[1] for m in merged]
            self.owners = [m[2] for m in merged]
            self.pending = []

    def overlaps(self, lo: int, hi: int) -> Iterator[tuple[int, int, str]]:
        """Held intervals meeting lo..hi, clipped to it, in ascending order."""
        self._settle()
        # Intervals never overlap each other, so his are sorted like los.
        i = bisect.bisect_left(self.his, lo)
        while i < len(self.los) and self.los[i] <= hi:
            yield max(lo, self.los[i]), min(hi, self.his[i]), self.owners[i]
            i += 1


@dataclass(frozen=True)
class HeldIdentities:
    """What one order holds of a product: its serial runs and explicit unique IDs."""

    order_id: str
    serials: tuple[Run, ...]
    rd_id_uids: tuple[str, ...] = ()


class IdentityRegistry:
    """The serials and unique IDs that the accepted orders of one product hold."""

    def __init__(self) -> None:
        self._spaces: dict[tuple[str, int], _Space] = {}
        self._uids: dict[str, str] = {}
        self.orders: set[str] = set()

    def add(self, held: HeldIdentities) -> None:
        """Record an accepted order's identities (checked disjoint from everything before it)."""
        by_space: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
        for run in held.serials:
            by_space.setdefault(run.space, []).append((run.lo, run.hi, held.order_id))
        for space, items in by_space.items():
            self._spaces.setdefault(space, _Space()).add(items)
        for uid in held.rd_id_uids:
            self._uids.setdefault(uid, held.order_id)
        self.orders.add(held.order_id)

    def holdings(self, run: Run) -> Iterator[Holding]:
        """Who holds which values of `run`, in ascending order."""
        space = self._spaces.get(run.space)
        if space is not None:
            for lo, hi, owner in space.overlaps(run.lo, run.hi):
                yield Holding(run, lo, hi, owner)

    def uid_holder(self, uid: str) -> str | None:
        """The order holding unique ID `uid` (lower-case hex), if any."""
        return self._uids.get(uid)

    def free_counter_start(
        self, vendor_id: int, product_id: int, start: int, count: int, own: IdentityRegistry
    ) -> int:
        """The first counter value >= start from which `count` counter serials are all free.

        Free of every accepted order and of `own` (the ordering order's other serials).
        """
        if count == 0:
            return start
        prefix = f"{vendor_id:04X}{product_id:04X}"
        while True:
            blocked = None
            for run, first_n in pattern_runs(prefix, start, start + count - 1, COUNTER_DIGITS):
                for reg in (self, own):
                    for h in reg.holdings(run):
                        n = first_n + (h.hi - run.lo)
                        blocked = n if blocked is None else max(blocked, n)
            if blocked is None:
                return start
            start = blocked + 1


COUNTER_DIGITS = 8  # allocation.counter_serial: VVVVPPPP + the value in at least 8 digits


def counter_runs(vendor_id: int, product_id: int, start: int, count: int) -> list[Run]:
    """Canonical runs of a product's counter serials start..start+count-1."""
    if count == 0:
        return []
    prefix = f"{vendor_id:04X}{product_id:04X}"
    return [r for r, _ in pattern_runs(prefix, start, start + count - 1, COUNTER_DIGITS)]


@dataclass
class OrderIdentities:
    """The identities an order asks for, each with the field that asks for it."""

    pattern: list[Run]  # from `serial` (indices with their own serial_num left out)
    explicit: list[Run]  # from devices[].serial_num
    rd_id_uids: list[tuple[int, str]]  # (device index, uid) from devices[].rd_id_uid

    @classmethod
    def of(cls, order: WorkOrder) -> OrderIdentities:
        """Collect the serials and unique IDs `order` supplies itself (not the counter's)."""
        explicit: list[str] = []
        uids: list[tuple[int, str]] = []
        pattern: list[Run] = []
        if order.devices is not None:
            explicit = [d.serial_num for d in order.devices if d.serial_num is not None]
            uids = [(i, d.rd_id_uid) for i, d in enumerate(order.devices) if d.rd_id_uid]
        if order.serial is not None:
            s = order.serial
            # Pattern indices form runs between devices that bring their own serial number.
            gaps = (
                [i for i, d in enumerate(order.devices) if d.serial_num is not None]
                if order.devices is not None
                else []
            )
            a = 0
            for g in [*gaps, order.quantity]:
                if a < g:
                    pattern += [
                        r for r, _ in pattern_runs(s.prefix, s.start + a, s.start + g - 1, s.digits)
                    ]
                a = g + 1
        return cls(pattern, explicit_runs(explicit), uids)

    def own(self) -> IdentityRegistry:
        """These identities as a registry of their own (to keep the counter clear of them)."""
        reg = IdentityRegistry()
        reg.add(HeldIdentities("", (*self.pattern, *self.explicit)))
        return reg

    def held(self, order_id: str, counter: list[Run]) -> HeldIdentities:
        """The claim record's identities: every serial run (pattern, explicit, counter), uids."""
        runs = merge_runs([*self.pattern, *self.explicit, *counter])
        return HeldIdentities(order_id, tuple(runs), tuple(sorted(u for _, u in self.rd_id_uids)))


def merge_runs(runs: list[Run]) -> list[Run]:
    """Disjoint runs sorted, adjacent ones of one space joined."""
    out: list[Run] = []
    for r in sorted(runs):
        last = out[-1] if out else None
        if last is not None and last.space == r.space and r.digits and last.hi + 1 == r.lo:
            out[-1] = Run(r.head, r.digits, last.lo, r.hi)
        else:
            out.append(r)
    return out


def conflicts(
    registry: IdentityRegistry, order: WorkOrder, ids: OrderIdentities
) -> list[FieldError]:
    """Field errors for every identity of `order` that another order already holds.

    Pattern conflicts name `serial` and the held range; explicit values name the device
    (`devices[17].serial_num`); at most MAX_REPORTED_ERRORS, lowest values first.
    """
    errors: list[FieldError] = []
    for run in ids.pattern:
        for h in registry.holdings(run):
            errors.append(FieldError("serial", h.describe()))
            if len(errors) >= MAX_REPORTED_ERRORS:
                return errors
    index_of: dict[str, int] | None = None
    for run in ids.explicit:
        for h in registry.holdings(run):
            if index_of is None:
                assert order.devices is not None  # explicit serials come from devices
                index_of = {d.serial_num: i for i, d in enumerate(order.devices) if d.serial_num}
            for n in range(h.lo, min(h.hi, h.lo + MAX_REPORTED_ERRORS) + 1):
                serial = run.serial(n)
                one = Holding(run, n, n, h.order_id)
                errors.append(FieldError(f"devices[{index_of[serial]}].serial_num", one.describe()))
                if len(errors) >= MAX_REPORTED_ERRORS:
                    return errors
    for i, uid in ids.rd_id_uids:
        holder = registry.uid_holder(uid)
        if holder is not None:
            errors.append(
                FieldError(f"devices[{i}].rd_id_uid", f"{uid} already used by order {holder}")
            )
            if len(errors) >= MAX_REPORTED_ERRORS:
                return errors
    return errors


def check_range(
    registry: IdentityRegistry, prefix: str, start: int, count: int, digits: int | None
) -> list[Holding]:
    """Who holds which of the serials `prefix + n` for n in start..start+count-1.

    With `digits`, n is zero-padded to that width (as a work order's `serial` pattern); without,
    every width that can write n is checked (SC-3, SC-03, SC-003, ... are all asked about).
    """
    end = start + count - 1
    widths = [digits] if digits is not None else list(range(1, MAX_DIGITS + 1))
    out: list[Holding] = []
    for width in widths:
        hi = min(end, 10**width - 1) if digits is None else end
        if start > hi:
            continue
        for run, _ in pattern_runs(prefix, start, hi, width):
            out.extend(registry.holdings(run))
    return out


MAX_DIGITS = 20  # SerialPattern.digits allows 1..20
