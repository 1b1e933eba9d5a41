"""matterfab.watermarks: whatever order records finish in, the offset offered for commit never
passes a record that is not done, and once all are done it is the last one taken + 1
(hypothesis: random completion orders, and a state machine with revocations and resets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from matterfab.watermarks import Mark, Taken, Watermarks

PARTITIONS = ("p0", "p1", "p2")


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[int]]:
    """Records taken in order (offsets rising per partition, with gaps) and an order to finish."""
    taken: list[tuple[str, int]] = []
    nexts = {p: draw(st.integers(0, 1000)) for p in PARTITIONS}
    for partition in draw(st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=40)):
        taken.append((partition, nexts[partition]))
        nexts[partition] += draw(st.integers(1, 3))  # compaction or control records: gaps
    order = draw(st.permutations(range(len(taken))))
    return taken, list(order)


@given(runs(), st.booleans())
def test_random_completion_orders_never_commit_past_a_record_not_done(
    run: tuple[list[tuple[str, int]], list[int]], commit_as_we_go: bool
) -> None:
    records, order = run
    marks: Watermarks[str] = Watermarks()
    tickets = [marks.take(p, o) for p, o in records]
    done: set[int] = set()
    last_offered: dict[str, int] = {}
    for i in order:
        assert marks.done(tickets[i])
        done.add(i)
        offered = marks.committable()
        for partition, mark in offered.items():
            mine = [(o, j in done) for j, (p, o) in enumerate(records) if p == partition]
            assert all(is_done for o, is_done in mine if o < mark.offset)
            # Exactly the first record not done, or just past the last one taken.
            not_done = [o for o, is_done in mine if not is_done]
            assert mark.offset == (min(not_done) if not_done else mine[-1][0] + 1)
            assert mark.offset >= last_offered.get(partition, 0)  # never moves back
            last_offered[partition] = mark.offset
        if commit_as_we_go:
            marks.committed(offered)
    assert marks.in_flight() == 0
    last = {p: o for p, o in records}
    if commit_as_we_go:
        assert marks.committable() == {}
        assert last_offered == {p: o + 1 for p, o in last.items()}
    else:
        assert {p: m.offset for p, m in marks.committable().items()} == {
            p: o + 1 for p, o in last.items()
        }


def test_nothing_is_offered_below_the_first_record_taken() -> None:
    marks: Watermarks[str] = Watermarks()
    first = marks.take("p0", 10)
    marks.take("p0", 11)
    assert marks.committable() == {}  # 10 in flight: committing 10 would say nothing new
    marks.done(first)
    assert marks.committable() == {"p0": Mark(11, first.epoch)}


def test_a_position_that_goes_back_starts_a_new_epoch() -> None:
    """After a rebalance the consumer starts again at the committed offset: records come
    again, and the ones still in flight from before count for nothing."""
    marks: Watermarks[str] = Watermarks()
    old = [marks.take("p0", o) for o in (5, 6, 7)]
    assert marks.done(old[0])
    again = marks.take("p0", 6)  # the position went back to 6
    assert again.epoch != old[0].epoch
    assert not marks.done(old[2])  # 7 of the old epoch: stale, changes nothing
    assert marks.committable() == {}  # 6 of the new epoch is in flight
    assert marks.done(again)
    assert marks.committable() == {"p0": Mark(7, again.epoch)}


def test_forget_drops_a_partition_until_it_is_taken_again() -> None:
    marks: Watermarks[str] = Watermarks()
    a, b = marks.take("p0", 0), marks.take("p1", 0)
    marks.forget(["p0"])
    assert not marks.done(a)
    assert marks.done(b)
    assert set(marks.committable()) == {"p1"}
    c = marks.take("p0", 3)  # a new assignment: from the committed offset
    assert marks.done(c)
    assert marks.committable()["p0"].offset == 4


def test_a_commit_of_an_ended_epoch_is_ignored() -> None:
    marks: Watermarks[str] = Watermarks()
    t = marks.take("p0", 0)
    marks.done(t)
    stale = marks.committable()
    marks.forget(["p0"])
    fresh = marks.take("p0", 0)
    marks.done(fresh)
    marks.committed(stale)  # committed before the rebalance: says nothing of the new epoch
    assert marks.committable() == {"p0": Mark(1, fresh.epoch)}


def test_done_twice_is_a_bug() -> None:
    marks: Watermarks[str] = Watermarks()
    t = marks.take("p0", 0)
    marks.done(t)
    with pytest.raises(ValueError, match="not in flight"):
        marks.done(t)


class WindowBookkeeping(RuleBasedStateMachine):
    """Takes, completions, commits, revocations and position resets in any interleaving."""

    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.marks: Watermarks[str] = Watermarks()
        # The model: per partition, the current epoch's records in order, and which are done.
        self.epoch: dict[str, int] = {}
        self.taken: dict[str, list[int]] = {}
        self.done: dict[str, set[int]] = {}
        self.floor: dict[str, int] = {}  # the epoch's first offset, then what was committed

    def _start(self, partition: str, offset: int, epoch: int) -> None:
        self.epoch[partition] = epoch
        self.taken[partition], self.done[partition] = [], set()
        self.floor[partition] = offset

    @rule(target=tickets, partition=st.sampled_from(PARTITIONS), gap=st.integers(1, 3))
    def take_next(self, partition: str, gap: int) -> Taken[str]:
        taken = self.taken.get(partition)
        offset = taken[-1] + gap if taken else gap * 7
        ticket = self.marks.take(partition, offset)
        if not taken:
            self._start(partition, offset, ticket.epoch)
        assert ticket.epoch == self.epoch[partition]
        self.taken[partition].append(offset)
        return ticket

    @precondition(lambda self: any(self.taken.values()))
    @rule(target=tickets, data=st.data())
    def position_goes_back(self, data: st.DataObject) -> Taken[str]:
        partition = data.draw(st.sampled_from(sorted(p for p, t in self.taken.items() if t)))
        offset = data.draw(st.integers(0, self.taken[partition][-1]))
        ticket = self.marks.take(partition, offset)
        self._start(partition, offset, ticket.epoch)
        self.taken[partition].append(offset)
        return ticket

    @rule(ticket=consumes(tickets))
    def finish(self, ticket: Taken[str]) -> None:
        current = self.epoch.get(ticket.partition) == ticket.epoch
        assert self.marks.done(ticket) == current
        if current:
            self.done[ticket.partition].add(ticket.offset)

    @rule()
    def commit(self) -> None:
        offered = self.marks.committable()
        self.marks.committed(offered)
        for partition, mark in offered.items():
            self.floor[partition] = mark.offset

    @rule(partition=st.sampled_from(PARTITIONS))
    def revoke(self, partition: str) -> None:
        self.marks.forget([partition])
        for table in (self.epoch, self.taken, self.done, self.floor):
            table.pop(partition, None)

    @invariant()
    def offers_the_first_record_not_done(self) -> None:
        offered = self.marks.committable()
        for partition, taken in self.taken.items():
            if not taken:
                continue
            not_done = [o for o in taken if o not in self.done[partition]]
            expected = min(not_done) if not_done else taken[-1] + 1
            assert all(o in self.done[partition] for o in taken if o < expected)
            if expected > self.floor[partition]:
                assert offered[partition] == Mark(expected, self.epoch[partition])
            else:
                assert partition not in offered
        assert set(offered) <= {p for p, t in self.taken.items() if t}


WindowBookkeeping.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_window_bookkeeping = WindowBookkeeping.TestCase
