"""Kafka clients configured the one way matterfab uses them, plus the admin reads ops need.

Producers send with `acks=all` and without Kafka's idempotence (below); consumers never
auto-commit, so a service commits an
offset only after the work it stands for is durable (at-least-once, DESIGN §7). Nothing here
depends on transactions or log compaction, so the same code runs on the embedded broker and on
Apache Kafka.

Every client gets its connection arguments from `client_options` (TLS, SASL) and is started
through `start`, which bounds the start by `connect_timeout_s`, closes the client when the
start fails (no "Unclosed AIOKafkaConsumer" at exit), and turns the failure into `Unreachable`
or `Refused` naming the bootstrap servers and the variable to set.

This is the one module that touches aiokafka's private internals (`_pace_empty_fetches`,
`refresh_metadata`, `leave_group`, `describe_group`, `remove_members`; search "PRIVATE"):
aiokafka is pinned (==0.14.0 in pyproject.toml) for them, and each says why it is needed.
Re-check them on every upgrade. The group reads and removals ops and stations need (members
with their static ids, removing a departed static member) use request versions aiokafka lacks,
declared here with its protocol types.
It also holds the one group-less reader of a whole topic (`topic_reader`): the CLI, the
monitor and the tests read `mfg.order-events` through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IncompatibleBrokerVersion, for_code
from aiokafka.protocol.admin import DescribeGroupsRequest_v0
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.group import LeaveGroupRequest_v0, LeaveGroupRequest_v1
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

from matterfab.config import KafkaSettings
from matterfab.errors import Missing, Refused, StackError, Unreachable

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # one message batch ≤ 1 MiB: images travel through S3, not Kafka


START_HINT = "start it (`make up`) or set MATTERFAB_KAFKA_BOOTSTRAP"


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of SSL / SASL_SSL: trusts only `ssl_cafile` when set (else the system's
    roots), presents the client certificate when set, checks hostnames unless switched off."""
    env = "MATTERFAB_KAFKA_"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise StackError(
            f"{env}SSL_CAFILE: cannot load CA bundle {settings.ssl_cafile} ({_reason(exc)})"
        ) from None
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        password = settings.ssl_key_password
        try:
            context.load_cert_chain(
                settings.ssl_certfile,
                settings.ssl_keyfile,
                password.get_secret_value() if password is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise StackError(
                f"{env}SSL_CERTFILE / {env}SSL_KEYFILE: cannot load the client certificate "
                f"{settings.ssl_certfile} with key {settings.ssl_keyfile} ({_reason(exc)})"
            ) from None
    context.check_hostname = settings.ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The connection arguments every aiokafka client of ours gets (bootstrap, TLS, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.uses_ssl:
        options["ssl_context"] = ssl_context(settings)
    if settings.uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        # aiokafka takes the SCRAM credentials through the same two arguments as PLAIN's.
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password_value()
    return options


def failure(settings: KafkaSettings, exc: BaseException, what: str = "") -> StackError:
    """A client failure as one line: what failed, where, and what to set or start."""
    doing = f" ({what})" if what else ""
    where = f"Kafka at {settings.bootstrap}"
    if isinstance(exc, StackError):
        return exc
    if isinstance(exc, ssl.SSLError):
        return Refused(
            f"{where}: TLS handshake failed{doing}: {_reason(exc)}; check "
            "MATTERFAB_KAFKA_SSL_CAFILE (the CA that signed the broker's certificate) and "
            "MATTERFAB_KAFKA_SSL_CHECK_HOSTNAME"
        )
    name = type(exc).__name__
    if "Authentication" in name or "SaslAuth" in name or "Authorization" in name:
        return Refused(
            f"{where} refused the credentials{doing} ({name}); check MATTERFAB_KAFKA_SASL_"
            "MECHANISM, MATTERFAB_KAFKA_SASL_USERNAME and the password"
        )
    detail = "no answer in time" if isinstance(exc, TimeoutError) else _short(exc)
    return Unreachable(f"{where} is unreachable{doing}: {detail}; {START_HINT}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "Unable to bootstrap" in text:
        text = "no bootstrap server answered"
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


async def start(client: Any, settings: KafkaSettings, what: str = "") -> None:
    """Start an aiokafka client within `connect_timeout_s`; on failure close it and raise
    `Unreachable` / `Refused` (one line naming the servers and what to set)."""
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            await client.start()
    except asyncio.CancelledError:
        await _close(client)
        raise
    except Exception as exc:
        await _close(client)
        if settings.uses_ssl and not isinstance(exc, StackError):
            # aiokafka reports a failed TLS handshake as "unable to bootstrap": find out.
            tls = await _tls_problem(settings)
            if tls is not None:
                raise failure(settings, tls, what) from exc
        raise failure(settings, exc, what) from exc


async def _tls_problem(settings: KafkaSettings) -> ssl.SSLError | None:
    """The TLS error a handshake with the first bootstrap server gives, if it gives one."""
    host, _, port = settings.bootstrap.split(",")[0].strip().rpartition(":")
    try:
        async with asyncio.timeout(min(5.0, settings.connect_timeout_s)):
            _, writer = await asyncio.open_connection(
                host.strip("[]"), int(port), ssl=ssl_context(settings)
            )
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    except ssl.SSLError as exc:
        return exc
    except (OSError, ValueError, TimeoutError, StackError):
        return None
    return None


async def _close(client: Any) -> None:
    # aiokafka 0.14 may raise CancelledError from a stop right after a failed start.
    closer = getattr(client, "stop", None) or client.close
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await closer()


# aiokafka's log lines that only say "the broker is not there" (one per socket attempt or
# coordinator request, tens a second): matched on the formatted message.
_CONNECTION_CHATTER = re.compile(
    r"^(Unable connect to|Unable to request metadata|Unable to update metadata|"
    r"Failed fetch messages)|NodeNotReadyError|KafkaConnectionError|"
    r"Marking the coordinator dead"
)


class _DropConnectionChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        return not _CONNECTION_CHATTER.search(text)


def quiet_connection_logs(everything: bool = False) -> None:
    """Drop aiokafka's own connection errors (one per socket attempt, ~10 a second while the
    broker is away): our callers report an outage in one line per attempt instead. With
    `everything` (a command, which reports its failure itself) aiokafka says nothing below
    CRITICAL. A root logger at DEBUG (`MATTERFAB_LOG_LEVEL=DEBUG`, logs.setup) keeps it all."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    if everything:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        return
    for name in (
        "aiokafka",
        "aiokafka.consumer.fetcher",
        "aiokafka.consumer.group_coordinator",
        "aiokafka.producer.sender",
    ):
        chatter = logging.getLogger(name)
        if not any(isinstance(f, _DropConnectionChatter) for f in chatter.filters):
            chatter.addFilter(_DropConnectionChatter())


def missing_topic(settings: KafkaSettings, topic: str) -> Missing:
    """The error for a topic the cluster lacks."""
    return Missing(
        f"topic {topic} does not exist on Kafka at {settings.bootstrap}: create the topics with "
        "`matterfab topics apply` (`make up` does it locally)"
    )


def producer(settings: KafkaSettings, **kw: Any) -> AIOKafkaProducer:
    """An acks=all producer (not started); keyword arguments override defaults."""
    options: dict[str, Any] = {
        **client_options(settings),
        # Idempotent on Kafka. Not on the embedded broker: noida-db 0.2.3 keeps its next
        # producer id only in its snapshot and, after a hard death, hands a live producer's id
        # to a new one; their sequence numbers collide and it acknowledges records it never
        # writes (80 DACs of a completed order missing from the ledger;
        # tests/reliability/test_broker_producer_ids.py). Every consumer of our topics is
        # idempotent (write-once objects, deterministic results), so there a duplicate from a
        # retried send costs only repeated work.
        "enable_idempotence": not settings.embedded,
        "acks": "all",
        # A few ms of batching multiplies throughput under load and costs nothing when idle.
        "linger_ms": 5,
        # Our records are JSON with base64 certificates that repeat their structure, so they
        # compress well, and the embedded broker rewrites everything it retains to its snapshot
        # about once a second (its CPU per device follows the bytes retained; on Kafka it is
        # disk and network). zstd (Kafka >= 2.1; aiokafka through cramjam) rather than gzip:
        # aiokafka's gzip is level 9, 1.2 ms for a 64-device LotAttested (74 KB → 26.7 KB) and
        # 2.2 ms for 64 ImageReady (74 KB → 19.3 KB); zstd does them in 0.27 and 0.16 ms, to
        # 25.7 and 16.8 KB (issue #26: ~0.05 ms a device over the pipeline).
        "compression_type": "zstd",
        "max_request_size": MAX_REQUEST_BYTES,
    }
    options.update(kw)
    return AIOKafkaProducer(**options)


# PRIVATE (aiokafka 0.14.0: Fetcher._proc_fetch_request, Fetcher._fetch_max_wait_ms).
# Kafka long-polls an empty fetch for fetch_max_wait_ms; the embedded broker (noida-db) answers
# it at once, so every idle consumer would spin ~1,800 fetches/s and burn half a core (measured
# by the benchmark). We hold an empty fetch client-side instead, for the consumer's own
# fetch_max_wait_ms: EMPTY_FETCH_PAUSE_S unless its spec asks otherwise (`consumer_options`;
# the allocator waits longer, issue #26). This wraps a private aiokafka method, which is why
# aiokafka is pinned; against a real Kafka none of this applies and fetch_max_wait_ms is
# Kafka's own long poll, which returns as soon as a record arrives.
EMPTY_FETCH_PAUSE_S = 0.05
LONGEST_PAUSE_S = 1.0  # whatever a consumer asks, an empty fetch is held no longer than this
# A consumer that eases when idle (`ease_when_idle`: the pipeline's stages) holds its empty
# fetches IDLE_PAUSE_S once its topics have been empty for IDLE_AFTER_S, until a record comes.
# Each empty fetch costs ~0.8 ms of the client's CPU (aiokafka decodes the response in
# Python) and the broker's: 20 a second were ~15 ms CPU a second per service, through every
# order for the stages that are done with theirs (issue #26). Under load records come more
# often than IDLE_AFTER_S, so nothing changes there; the first record after a quiet second
# waits at most IDLE_PAUSE_S more at each stage.
IDLE_AFTER_S = 1.0
IDLE_PAUSE_S = 0.2


def empty_fetch_pause_s(fetch_max_wait_ms: int, idle_s: float = 0.0, eases: bool = False) -> float:
    """How long a consumer on the embedded broker holds an empty fetch: its own wait, capped;
    if it eases when idle and its topics have been empty `idle_s` >= IDLE_AFTER_S, longer."""
    pause = min(fetch_max_wait_ms / 1000, LONGEST_PAUSE_S)
    if eases and idle_s >= IDLE_AFTER_S:
        return max(pause, IDLE_PAUSE_S)
    return pause


def ease_when_idle(consumer: AIOKafkaConsumer) -> None:
    """Let a started consumer on the embedded broker poll less once its topics are quiet.

    PRIVATE (aiokafka 0.14.0: AIOKafkaConsumer._fetcher, made by `start`): the flag is read by
    the paced fetch below. For consumers where the first record after a quiet second may wait
    IDLE_PAUSE_S more: the pipeline's stages, and the signer's DAC requests (a station spends
    seconds flashing around each), not a station's images.
    """
    fetcher_ = getattr(consumer, "_fetcher", None)
    if fetcher_ is not None:
        fetcher_._matterfab_eases = True


def _pace_empty_fetches() -> None:
    from aiokafka.consumer import fetcher

    original = fetcher.Fetcher._proc_fetch_request
    if getattr(original, "_matterfab_paced", False):
        return

    async def paced(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        started = time.monotonic()
        got_data = await original(self, assignment, node_id, request)
        if got_data:
            self._matterfab_empty_since = None
        else:
            since = getattr(self, "_matterfab_empty_since", None)
            if since is None:
                self._matterfab_empty_since = since = started
            pause = empty_fetch_pause_s(
                self._fetch_max_wait_ms,
                started - since,
                getattr(self, "_matterfab_eases", False),
            )
            remaining = pause - (time.monotonic() - started)
            if remaining > 0:
                try:
                    await asyncio.sleep(remaining)
                except asyncio.CancelledError:
                    # Closing, or partitions unassigned: aiokafka's own method returns here too.
                    return got_data
        return got_data

    paced._matterfab_paced = True  # type: ignore[attr-defined]
    fetcher.Fetcher._proc_fetch_request = paced


# PRIVATE (aiokafka 0.14.0: ConsumerProtocolMemberAssignment.decode, via the coordinator's
# _on_join_complete). The embedded broker sometimes hands a member an empty assignment (b''),
# where Kafka sends a serialised empty one; aiokafka fails to parse it, its coordinator routine
# dies, and the member is left half-joined: the service restarted its consumer, but the group
# then stalled new static members for minutes (measured in `make test`: the builder group after
# a second builder joined). Empty bytes mean what they mean on Kafka: no partitions this round.
def _tolerate_empty_assignments() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment as Assignment

    original = Assignment.decode.__func__  # Struct.decode, a classmethod
    if getattr(original, "_matterfab_empty_ok", False):
        return

    def decode(cls: Any, data: Any) -> Any:
        empty = data == b"" or (hasattr(data, "getbuffer") and not data.getbuffer().nbytes)
        if empty:
            return cls(0, [], b"")
        return original(cls, data)

    decode._matterfab_empty_ok = True  # type: ignore[attr-defined]
    Assignment.decode = classmethod(decode)


def consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, **kw: Any
) -> AIOKafkaConsumer:
    """A group consumer (not started) that commits only when told to, from the earliest offset.

    aiokafka is patched (below) only for the embedded broker; against Kafka it runs as shipped.
    """
    if settings.embedded:
        _pace_empty_fetches()
        _tolerate_empty_assignments()
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 200,
    }
    if settings.embedded:  # the client-side pause after an empty fetch (above)
        options["fetch_max_wait_ms"] = int(EMPTY_FETCH_PAUSE_S * 1000)
    options.update(kw)
    return AIOKafkaConsumer(*topics, **options)


@asynccontextmanager
async def admin(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for the duration of the block."""
    client = AIOKafkaAdminClient(**client_options(settings))
    await start(client, settings, "admin client")
    try:
        yield client
    finally:
        await client.close()


async def check_broker(settings: KafkaSettings) -> None:
    """One metadata round trip within `connect_timeout_s`; `Unreachable` / `Refused` if not."""
    client = AIOKafkaAdminClient(**client_options(settings))
    await start(client, settings)
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            await client.describe_cluster()
    except Exception as exc:
        raise failure(settings, exc) from exc
    finally:
        await _close(client)


async def wait_for_broker(settings: KafkaSettings, timeout: float = 30) -> None:
    """Return once the broker answers a metadata request; StackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        attempt = settings.model_copy(
            update={"connect_timeout_s": max(0.5, min(5.0, deadline - time.monotonic()))}
        )
        try:
            await check_broker(attempt)
            return
        except Unreachable as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise Unreachable(f"{last or 'Kafka at ' + settings.bootstrap + ' is unreachable'} "
                      f"(waited {timeout:.0f}s)")  # fmt: skip


async def partitions_for(settings: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics` (topics unknown to the broker are skipped)."""
    async with admin(settings) as client:
        # Never name a missing topic in a metadata request: brokers may auto-create it.
        known = set(await client.list_topics())
        wanted = [t for t in topics if t in known]
        described = await client.describe_topics(wanted) if wanted else []
    result: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"]:
            continue
        result.extend(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
    return sorted(result)


async def end_offsets(
    settings: KafkaSettings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The log-end offset (next offset to be written) of each partition."""
    wanted = list(partitions)
    if not wanted:
        return {}
    reader = consumer(settings, group_id=None)
    await start(reader, settings, "end offsets")
    try:
        offsets: dict[TopicPartition, int] = await reader.end_offsets(wanted)
        return offsets
    finally:
        await reader.stop()


async def committed_offsets(settings: KafkaSettings, group_id: str) -> dict[TopicPartition, int]:
    """The offsets `group_id` has committed, per partition (partitions never committed omitted)."""
    async with admin(settings) as client:
        raw = await client.list_consumer_group_offsets(group_id)
    return {tp: meta.offset for tp, meta in raw.items() if meta.offset >= 0}


@dataclass(frozen=True)
class PartitionLag:
    """How far one consumer group is behind on one partition."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    end: int
    lag: int


async def group_lag(settings: KafkaSettings, group_id: str) -> list[PartitionLag]:
    """Per-partition lag of `group_id` over every topic it has committed offsets on."""
    committed = await committed_offsets(settings, group_id)
    if not committed:
        return []
    # Lag covers every partition of the group's topics, including ones it never committed on.
    partitions = await partitions_for(settings, {tp.topic for tp in committed})
    ends = await end_offsets(settings, partitions)
    rows = []
    for tp in partitions:
        done = committed.get(tp)
        end = ends.get(tp, 0)
        rows.append(PartitionLag(tp.topic, tp.partition, done, end, max(0, end - (done or 0))))
    return rows


async def list_groups(settings: KafkaSettings) -> list[str]:
    """Every consumer group the cluster knows, sorted by name."""
    async with admin(settings) as client:
        groups = await client.list_consumer_groups()
    return sorted({str(group[0]) for group in groups})


async def refresh_metadata(client: AIOKafkaConsumer) -> None:
    """Ask the cluster for fresh metadata now (a topic created since the client started).

    PRIVATE (aiokafka 0.14.0: AIOKafkaConsumer._client.force_metadata_update): the public
    consumer API only refreshes on its own schedule (metadata_max_age_ms), and a group-less
    reader that starts before its topic exists would otherwise see no partitions for minutes.
    """
    await client._client.force_metadata_update()


async def leave_group(client: AIOKafkaConsumer, group_id: str) -> bool:
    """Send LeaveGroup for this consumer's membership; False when it holds none.

    PRIVATE (aiokafka 0.14.0: AIOKafkaConsumer._coordinator, its member_id, _group_instance_id
    and _send_req): aiokafka never sends LeaveGroup for a static member (KIP-345 expects the
    broker to expire it after session.timeout.ms), and the embedded broker never expires
    members, so without this a stopped static member would hold its partitions and stall every
    later join. A static member leaves by its group_instance_id too (LeaveGroup v3) where the
    broker speaks it, as KIP-345 asks.
    """
    coordinator = getattr(client, "_coordinator", None)
    member_id = getattr(coordinator, "member_id", None)
    if coordinator is None or not member_id:
        return False
    instance = getattr(coordinator, "_group_instance_id", None)
    await coordinator._send_req(_LeaveGroup(group_id, [(member_id, instance)]))
    return True


# LeaveGroup v3 (members by group_instance_id, KIP-345's "remove static members" admin call)
# and DescribeGroups v4 (each member's group_instance_id): aiokafka 0.14.0 has neither, so they
# are declared here with its public protocol types. Both are non-flexible versions that Kafka
# (2.4+) and noida-db 0.2.3 (LeaveGroup ≤ v5, DescribeGroups ≤ v5) accept.
class _LeaveGroupResponse_v3(Response):
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequest_v3(RequestStruct):
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _LeaveGroup(Request[LeaveGroupRequest_v0 | LeaveGroupRequest_v1 | _LeaveGroupRequest_v3]):
    """LeaveGroup: v3 (members by instance id) where the broker has it, else v0/v1 (one id)."""

    API_KEY = 13

    def __init__(self, group: str, members: list[tuple[str, str | None]]):
        self.group = group
        self.members = members

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.API_VERSION >= 3:
            return request_struct_class(self.group, self.members)
        member_id, instance = self.members[0]
        if not member_id:
            raise IncompatibleBrokerVersion(
                f"removing member {instance} by group_instance_id needs LeaveGroup v3"
            )
        return request_struct_class(self.group, member_id)


class _DescribeGroupsResponse_v4(Response):
    API_KEY = 15
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", String("utf-8")),
                ("state", String("utf-8")),
                ("protocol_type", String("utf-8")),
                ("protocol", String("utf-8")),
                (
                    "members",
                    Array(
                        ("member_id", String("utf-8")),
                        ("group_instance_id", String("utf-8")),
                        ("client_id", String("utf-8")),
                        ("client_host", String("utf-8")),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class _DescribeGroupsRequest_v4(RequestStruct):
    API_KEY = 15
    API_VERSION = 4
    RESPONSE_TYPE = _DescribeGroupsResponse_v4
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _DescribeGroups(Request[DescribeGroupsRequest_v0 | _DescribeGroupsRequest_v4]):
    """DescribeGroups: v4 (with each member's instance id) where the broker has it, else v0."""

    API_KEY = 15

    def __init__(self, group: str):
        self.group = group

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.API_VERSION >= 4:
            return request_struct_class([self.group], False)
        return request_struct_class([self.group])


@dataclass(frozen=True)
class GroupMember:
    """One member of a consumer group as the coordinator sees it."""

    member_id: str
    instance_id: str | None  # static membership (KIP-345); None for a dynamic member
    client_id: str
    host: str

    @property
    def name(self) -> str:
        """How messages name it: its instance id, else its client id."""
        return self.instance_id or self.client_id or self.member_id


@dataclass(frozen=True)
class GroupState:
    """A consumer group's state (`Stable`, `PreparingRebalance`, `Empty`, …) and members."""

    group: str
    state: str
    members: tuple[GroupMember, ...]


async def describe_group(client: AIOKafkaAdminClient, group_id: str) -> GroupState:
    """The group's state and members (instance ids where the broker reports them)."""
    node = await client.find_coordinator(group_id)
    response = await client._send_request(_DescribeGroups(group_id), node)  # PRIVATE (0.14.0)
    for entry in response.groups:
        error_code, group, state = entry[0], entry[1], entry[2]
        if group != group_id:
            continue
        if error_code:
            raise for_code(error_code)(f"describing group {group_id}")
        members = []
        for m in entry[5]:
            if len(m) == 6:  # v4: member_id, group_instance_id, client_id, client_host, …
                members.append(GroupMember(m[0], m[1] or None, m[2], m[3]))
            else:
                members.append(GroupMember(m[0], None, m[1], m[2]))
        return GroupState(group_id, state, tuple(members))
    return GroupState(group_id, "Dead", ())


async def remove_members(
    client: AIOKafkaAdminClient, group_id: str, instance_ids: Iterable[str]
) -> dict[str, str | None]:
    """Remove static members from a group by group_instance_id (KIP-345's admin removal, as
    Kafka's `removeMembersFromConsumerGroup`): their partitions go to the others at once.
    Per instance id: None when removed, else the broker's error name."""
    wanted: list[tuple[str, str | None]] = [("", i) for i in instance_ids]
    if not wanted:
        return {}
    node = await client.find_coordinator(group_id)
    response = await client._send_request(_LeaveGroup(group_id, wanted), node)  # PRIVATE
    # Per member, in the order asked (noida-db echoes the instance id back empty, and also sets
    # the top-level error when one of them was unknown; Kafka sets it only for the request).
    answers = list(response.members)
    if len(answers) != len(wanted):
        name = for_code(response.error_code).__name__ if response.error_code else None
        return {str(i): name for _, i in wanted}
    return {
        str(i): for_code(a[2]).__name__ if a[2] else None
        for (_, i), a in zip(wanted, answers, strict=True)
    }


async def topic_reader(
    settings: KafkaSettings, topic: str, position: str | dict[int, int] = "beginning"
) -> AIOKafkaConsumer:
    """A started group-less consumer on every partition of `topic`, positioned at `position`.

    `position` is "beginning", "end" (resolved now, so nothing sent after this returns is
    missed) or an offset per partition (others from the beginning). Bounded by
    connect_timeout_s; raises `Missing` when the topic does not exist, `Unreachable` /
    `Refused` as `start` does. No group: nothing is committed, every reader sees everything.
    """
    what = f"reading {topic}"
    cons = consumer(settings, group_id=None)
    await start(cons, settings, what)
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            parts = cons.partitions_for_topic(topic) or set()
            if not parts:
                await refresh_metadata(cons)
                parts = cons.partitions_for_topic(topic) or set()
            if not parts:
                raise missing_topic(settings, topic)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            cons.assign(tps)
            if position == "end":
                await cons.seek_to_end(*tps)
                for tp in tps:  # resolve the lazy seek now, before anything is sent
                    await cons.position(tp)
            elif position == "beginning":
                await cons.seek_to_beginning(*tps)
            else:
                assert isinstance(position, dict)
                for tp in tps:
                    cons.seek(tp, position.get(tp.partition, 0))
    except BaseException as exc:
        await stop_reader(cons)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise failure(settings, exc, what) from exc
    return cons


async def stop_reader(cons: AIOKafkaConsumer) -> None:
    """Stop a reader; aiokafka 0.14 may raise CancelledError when stopped right after start."""
    with contextlib.suppress(asyncio.CancelledError):
        await cons.stop()
