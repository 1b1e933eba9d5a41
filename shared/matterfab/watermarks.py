"""Which offset a consumer may commit when records finish out of order (the runtime's window).

A record is *taken* when the consumer hands it to a handler and *done* once it was handled and
what it emitted was acknowledged. Per partition, the offset to commit is the one just past the
longest prefix of taken records that are all done: the lowest offset still in flight, or the
last one taken + 1 when none is. Committing it never skips a record that is not done, whatever
order the records finish in.

A partition's bookkeeping lives in an *epoch*. `forget` ends it (the partition was revoked),
and so does taking an offset not above the last one taken (the consumer's position went back,
so records come again). A record taken in an earlier epoch may still finish; its `done`
changes nothing, since what it stands for comes again in the new epoch. A new epoch starts
at the first offset it takes, so `forget` is safe only if the next record taken of that
partition is at or below the first one not done: after a revocation the consumer restarts
from the committed offset, which is. Pure bookkeeping: no clock, no I/O, no Kafka.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

P = TypeVar("P", bound=Hashable)  # a partition (the runtime's aiokafka TopicPartition)


@dataclass(frozen=True)
class Taken(Generic[P]):
    """One taken record: its partition, its offset, and the partition's epoch when taken."""

    partition: P
    offset: int
    epoch: int


class Mark(NamedTuple):
    """An offset that may be committed, with the epoch of the partition it was computed in."""

    offset: int
    epoch: int


@dataclass
class _Partition:
    epoch: int
    committed: int  # nothing below it is ours to commit: the epoch's first offset, then commits
    last: int  # the last offset taken
    in_flight: set[int] = field(default_factory=set)

    def watermark(self) -> int:
        return min(self.in_flight) if self.in_flight else self.last + 1


class Watermarks(Generic[P]):
    """Taken and done records per partition → the offset that may be committed for each."""

    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}
        self._epochs = 0

    def take(self, partition: P, offset: int) -> Taken[P]:
        """Record that `offset` of `partition` was handed to a handler."""
        state = self._partitions.get(partition)
        if state is None or offset <= state.last:
            self._epochs += 1
            state = _Partition(epoch=self._epochs, committed=offset, last=offset)
            self._partitions[partition] = state
        state.last = offset
        state.in_flight.add(offset)
        return Taken(partition, offset, state.epoch)

    def done(self, taken: Taken[P]) -> bool:
        """Record that a taken record is done; False if its epoch ended (it changes nothing)."""
        state = self._partitions.get(taken.partition)
        if state is None or state.epoch != taken.epoch:
            return False
        if taken.offset not in state.in_flight:
            raise ValueError(f"{taken} is not in flight (done twice?)")
        state.in_flight.remove(taken.offset)
        return True

    def forget(self, partitions: Iterable[P]) -> None:
        """End these partitions' epochs: nothing is committed for them until taken again.

        Only when the consumer will start them again from the committed offset (a
        revocation): an epoch begins at its first offset taken, so forgetting a partition and
        taking on above a record still in flight would let a commit pass that record.
        """
        for partition in partitions:
            self._partitions.pop(partition, None)

    def committable(self, partitions: Iterable[P] | None = None) -> dict[P, Mark]:
        """Per partition (all, or these), the offset to commit where it passed the last commit."""
        wanted = self._partitions if partitions is None else set(partitions)
        marks = {}
        for partition, state in self._partitions.items():
            if partition in wanted and state.watermark() > state.committed:
                marks[partition] = Mark(state.watermark(), state.epoch)
        return marks

    def committed(self, marks: Mapping[P, Mark]) -> None:
        """Record that these marks were committed (those of an epoch since ended are ignored)."""
        for partition, mark in marks.items():
            state = self._partitions.get(partition)
            if state is not None and state.epoch == mark.epoch:
                state.committed = max(state.committed, mark.offset)

    def in_flight(self) -> int:
        """Taken records not yet done, in the current epochs."""
        return sum(len(state.in_flight) for state in self._partitions.values())
