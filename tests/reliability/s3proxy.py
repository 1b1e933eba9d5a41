"""A fault-injecting proxy in front of the stack's S3 store: holds chosen requests mid-flight.

A service pointed at it (`MATTERFAB_S3_ENDPOINT`) talks to the store through it unchanged:
every request is forwarded byte for byte, so SigV4 signatures (which cover the Host header the
client wrote) still hold. A test arms a rule; the requests it matches, after the first
`let_through`, are then held whole in the proxy and not forwarded. With the client blocked in
the middle of a round of PUTs, the test SIGKILLs it and then decides each held request's fate,
as a power cut would: it lands after the client died (`LAND`: forwarded, its answer read and
thrown away), never reaches the store (`DROP`), or reaches it cut short (`CUT`: the head and
half the body, then the connection closes).

Nothing in the services knows about it: this is how a test stops a service between the PUTs
of one lot without a fault hook in production code. It runs its own event loop in a thread,
so it keeps forwarding while the test's loop is busy or between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

T = TypeVar("T")
Fate = Literal["land", "drop", "cut"]
LAND: Fate = "land"
DROP: Fate = "drop"
CUT: Fate = "cut"
HEAD_LIMIT = 1 << 20  # an HTTP request head is a few hundred bytes; refuse anything absurd


@dataclass
class Request:
    """One whole HTTP/1.1 request as the client sent it."""

    method: str
    key: str  # the object key (path-style URL without the bucket), "" for bucket requests
    raw: bytes
    body_at: int  # where the body starts in `raw`


@dataclass
class Held:
    """A request the proxy holds: nothing of it has reached the store."""

    request: Request
    fate: asyncio.Future[Fate]  # in the proxy's loop
    decided: Fate | None = None  # what the test decided (set in the test's thread)
    landed: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        """The object key the request is for."""
        return self.request.key


@dataclass
class Rule:
    """Which requests to hold: those `match(method, key)` accepts, after `let_through`."""

    match: Callable[[str, str], bool]
    let_through: int = 0
    passed: list[str] = field(default_factory=list)  # keys of matching requests forwarded
    held: list[Held] = field(default_factory=list)  # the matching requests held, in order


async def read_request(reader: asyncio.StreamReader, bucket: str) -> Request | None:
    """The next whole request on a client connection; None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("client closed the connection inside a request head") from exc
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"expect") == b"100-continue":
        # The client would wait for the store before sending its body, which a proxy that
        # holds whole requests never lets it do. obstore 0.12 does not send it.
        raise ConnectionError("Expect: 100-continue is not supported by this test proxy")
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    body += trailer
                    if trailer == b"\r\n":
                        break
                break
            body += await reader.readexactly(size + 2)
        raw_body = bytes(body)
    else:
        raw_body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    path = unquote(urlsplit(target).path)
    prefix = f"/{bucket}/"
    key = path[len(prefix) :] if path.startswith(prefix) else ""
    return Request(method, key, head + raw_body, len(head))


class S3FaultProxy:
    """An HTTP proxy to one S3 endpoint that can hold matching requests (see module doc)."""

    def __init__(self, upstream: str, bucket: str):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"the test proxy forwards plain http://host:port only, not {upstream}")
        self.host, self.port = parts.hostname, parts.port
        self.bucket = bucket
        self.endpoint = ""
        self._lock = threading.Lock()
        self._rule: Rule | None = None  # the armed rule
        self._last: Rule | None = None  # the last rule armed (held requests stay with it)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-fault-proxy")
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # ---- lifecycle (called from the test's thread)

    def start(self) -> str:
        """Start listening on a free local port; returns the endpoint to give services."""
        self._thread.start()
        server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0, limit=HEAD_LIMIT))
        self._server = server
        port = server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    def stop(self) -> None:
        """Close every connection and the listener; held requests are dropped."""
        if self._server is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for held in self._last.held if self._last else []:
                if not held.fate.done():
                    held.fate.set_result(DROP)
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._server = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # ---- the test's controls

    def arm(self, match: Callable[[str, str], bool], let_through: int = 0) -> Rule:
        """Hold the requests `match(method, key)` accepts, after the first `let_through`."""
        rule = Rule(match, let_through)
        with self._lock:
            undecided = [h.key for h in self._last.held if h.decided is None] if self._last else []
            assert not undecided, f"requests still held by the last rule: {undecided}"
            self._rule = self._last = rule
        return rule

    def disarm(self) -> None:
        """Forward every request from now on (requests already held stay held until decided)."""
        with self._lock:
            self._rule = None

    def held(self) -> list[Held]:
        """The requests the last rule armed has held (decided or not), in arrival order."""
        with self._lock:
            return list(self._last.held) if self._last else []

    def decide(self, held: Held, fate: Fate, timeout: float = 30) -> None:
        """Let a held request land, drop it, or cut it; `LAND` returns once the store answered."""
        held.decided = fate
        self._loop.call_soon_threadsafe(_settle, held.fate, fate)
        if fate == LAND and not held.landed.wait(timeout):
            raise AssertionError(f"held PUT of {held.key} got no answer from the store")

    async def wait_held(self, count: int, timeout: float) -> list[Held]:
        """Wait (in the test's loop) until at least `count` requests are held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.held()
            if len(held) >= count:
                return held
            await asyncio.sleep(0.02)
        raise AssertionError(f"the proxy held {len(self.held())} requests, expected {count}")

    # ---- the proxy's loop

    def _verdict(self, request: Request) -> Held | None:
        with self._lock:
            rule = self._rule
            if rule is None or not rule.match(request.method, request.key):
                return None
            if len(rule.passed) < rule.let_through:
                rule.passed.append(request.key)
                return None
            held = Held(request, self._loop.create_future())
            rule.held.append(held)
            return held

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.port)
        except OSError:  # the store is down: so is the proxy, as the client will see
            client_w.close()
            self._conns.discard(task)
            return
        answered = asyncio.Event()
        pump = asyncio.create_task(_pump(up_r, client_w, answered))
        try:
            while True:
                request = await read_request(client_r, self.bucket)
                if request is None:
                    break
                held = self._verdict(request)
                if held is None:
                    answered.clear()
                    up_w.write(request.raw)
                    await up_w.drain()
                    continue
                fate = await held.fate
                if fate == DROP:
                    break
                if fate == CUT:
                    body = len(request.raw) - request.body_at
                    up_w.write(request.raw[: request.body_at + body // 2])
                    await up_w.drain()
                    break
                answered.clear()
                up_w.write(request.raw)
                await up_w.drain()
                # The store's answer means it has done the PUT; closing before it could
                # abort the request on the server side.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), 20)
                if answered.is_set():
                    held.landed.set()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client died or spoke something else: close both sides
        finally:
            up_w.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await pump
            client_w.close()
            self._conns.discard(task)


def _settle(future: asyncio.Future[Fate], fate: Fate) -> None:
    if not future.done():
        future.set_result(fate)


async def _pump(
    up_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, answered: asyncio.Event
) -> None:
    """Copy the store's answers to the client; once the client is gone, read and discard."""
    client_gone = False
    while True:
        data = await up_r.read(65536)
        if not data:
            break
        answered.set()
        if client_gone:
            continue
        try:
            client_w.write(data)
            await client_w.drain()
        except (ConnectionError, RuntimeError):
            client_gone = True
    if not client_gone:
        with contextlib.suppress(ConnectionError, RuntimeError):
            client_w.write_eof()
