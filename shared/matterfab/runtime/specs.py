"""What a stream service consumes and how it handles one message: a `BatchSpec` or a
`WindowSpec` (`ServiceSpec` is either). The mode is the type, so a field of the other mode (a
flush on a window, a window on a batch) is an error for mypy and at construction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka.abc import ConsumerRebalanceListener

from matterfab.messages.base import Message
from matterfab.runtime.publisher import Emit

# What a service's handler takes: the topic's model, or what the spec's own `decode` makes of
# the raw bytes (the allocator keeps an unparseable order as a `Submission` to reject it).
T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """A further topic a service consumes, with its message model and handler."""

    model: type[Message]
    handle: Callable[[Any], Awaitable[Sequence[Emit]]]


@dataclass
class _Spec(Generic[T]):
    """What every stream service declares, whichever its mode.

    `model` is the topic's message model; the handler takes a `T`: the model itself when
    `decode` is left out (codec.decode(raw, model)), else whatever `decode` returns.
    """

    name: str
    topic: str
    model: type[Message]
    group_id: str
    handle: Callable[[T], Awaitable[Sequence[Emit]]]
    decode: Callable[[bytes], T] | None = None
    on_start: Callable[[], Awaitable[None]] | None = None
    on_idle: Callable[[], Awaitable[Sequence[Emit]]] | None = None
    routes: dict[str, Route] = field(default_factory=dict)  # more topics: topic -> Route
    # Consumer options beyond the runtime's (the station's long max_poll_interval_ms), and a
    # listener told of every rebalance.
    consumer_options: dict[str, Any] = field(default_factory=dict)
    # On the embedded broker: poll less once the topics are quiet (kafka.ease_when_idle): the
    # first record after a quiet second may wait 0.2 s more. The pipeline's stages opt in.
    ease_when_idle: bool = False
    listener: ConsumerRebalanceListener | None = None
    # A static member leaves its group on a clean stop (its partitions move on at once);
    # False keeps them for its return (a station restarting finds its image uncommitted).
    leave_on_stop: bool = True
    # How messages name the group besides its id (a station's "line <line>").
    group_label: str = ""


@dataclass
class BatchSpec(_Spec[T]):
    """Batches (`matterfab.runtime.batch`): up to `max_batch` records fetched, handled
    `concurrency` at once, then committed together."""

    concurrency: int = 1
    max_batch: int = 200
    # Services that gather records in memory and store them in bulk: `flush` makes everything
    # handled so far durable and returns what to announce. With a flush, offsets are committed
    # only after it, and it runs once `linger_s` passed since the last one (or on stop), so
    # one bulk write covers many batches. Without, every batch is committed as it is handled.
    flush: Callable[[], Awaitable[Sequence[Emit]]] | None = None
    linger_s: float = 0.0
    # Asked after each batch: True flushes at once, before `linger_s` (the assembler: a batch
    # that brings an order's last images, so its manifest is not held back by the linger).
    flush_due: Callable[[], bool] | None = None

    @property
    def max_poll_records(self) -> int:
        """What one fetch may return."""
        return self.max_batch


@dataclass
class WindowSpec(_Spec[T]):
    """A sliding window (`matterfab.runtime.window`): up to `window` records in flight at all
    times, the next one taken as soon as one is done, each partition committed up to its first
    record not done. For records that take long and unevenly (the builder's lots). There is
    no concurrency, batch size or flush here: those are a batch's."""

    window: int = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"{self.name}: window must be at least 1, not {self.window}")

    @property
    def max_poll_records(self) -> int:
        """What one fetch may return."""
        return self.window


# A stream service's spec: its mode is its type.
ServiceSpec: TypeAlias = BatchSpec[T] | WindowSpec[T]
