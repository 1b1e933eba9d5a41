"""Async object store over the S3 API (SeaweedFS locally, MinIO or AWS S3 in production).

Objects go through `obstore` (Rust `object_store` bindings): it signs and sends a request for
about a quarter of the CPU botocore needs (measured against SeaweedFS: 0.35 vs 1.45 ms per small
PUT), which matters when every device costs four PUTs on a 2-core machine. Bucket
administration (create, once at `up`) stays with aioboto3, which obstore does not cover.

Per-device artifacts are write-once (DESIGN §5): `put_once` stores an object only if its key
is free, turns a redelivered identical write into a no-op, and raises `IntegrityError` when the
key already holds different bytes; nothing ever overwrites a device artifact. Every call rides
out a store that is briefly down (restart, network blip) by retrying connection errors and
5xx answers with capped exponential backoff and jitter (`matterfab.backoff`), logging one line
per attempt and one when the store is back, so services survive an outage of the store.
Answers no retry changes fail at once as one line naming the endpoint, the bucket and the
variable to fix: credentials refused (`AccessDenied`), bucket missing (`BucketMissing`), TLS
trust (`Refused`). `check()` is the start-up probe of commands and long-running processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import obstore
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    InvalidPathError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import S3Store

from matterfab.backoff import Backoff
from matterfab.config import S3Settings
from matterfab.errors import IntegrityError, Missing, Refused, StackError, Unreachable
from matterfab.metrics import S3_REQUESTS

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 error codes that mean "try again": server-side trouble, throttling, and the 409 S3 returns
# when two conditional writes of one key race (AWS documents it as retryable).
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Attributes obstore reports that are not user metadata (x-amz-meta-…).
_STANDARD_ATTRIBUTES = frozenset(
    {
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Type",
        "Cache-Control",
        "Storage-Class",
    }
)


SETTLE_S = 0.1

# Requests sent, by S3 operation (counted at each attempt, in the call that sends it).
_SENT = {
    op: S3_REQUESTS.labels(op)
    for op in ("put", "get", "get_range", "head", "list", "delete", "head_bucket", "create_bucket")
}


class AccessDenied(Refused):
    """The store refused our credentials (wrong key or secret, or no right to the bucket).

    Permanent (`matterfab.failures`): a running service does not retry it, nor drop the work: it
    stops taking records, uncommitted, and `/healthz` names it until the deployment is fixed.
    """


class BucketMissing(Missing):
    """The store answers but has no such bucket (the store never creates it implicitly)."""


START_HINT = "start it (`make up`) or set MATTERFAB_S3_ENDPOINT"
PROBE_PREFIX = "health/probe/"  # never written: `check()` lists it
_NO_BUCKET = re.compile(r"NoSuchBucket|specified bucket does not exist")
_TLS = re.compile(r"certificate|UnknownIssuer|InvalidCertificate|tls handshake|SSL", re.IGNORECASE)


def _bucket_missing(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        return _error_code(exc) == "NoSuchBucket"
    return bool(_NO_BUCKET.search(str(exc)))


def _tls_failure(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:  # botocore wraps ssl.SSLError; obstore says it in its text
        if type(chain).__name__ in ("SSLError", "SSLCertVerificationError"):
            return True
        chain = chain.__cause__ or chain.__context__
    return isinstance(exc, BaseError) and bool(_TLS.search(str(exc)))


def virtual_hosted_endpoint(endpoint: str, bucket: str) -> str:
    """`https://host:port` -> `https://<bucket>.host:port` (obstore wants the bucket in it)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return f"{bucket}.{endpoint}"
    return f"{scheme}://{bucket}.{rest}"


def read_ca_bundle(settings: S3Settings) -> str | None:
    """The PEM text of MATTERFAB_S3_CA_BUNDLE, or None when unset."""
    if settings.ca_bundle is None:
        return None
    try:
        text = settings.ca_bundle.read_text()
    except OSError as exc:
        raise StackError(
            f"MATTERFAB_S3_CA_BUNDLE: cannot read {settings.ca_bundle} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise StackError(f"MATTERFAB_S3_CA_BUNDLE: {settings.ca_bundle} holds no PEM certificate")
    return text


@dataclass(frozen=True)
class StoredObject:
    """An object as stored: its key, sha256 (hex), size, and whether this call created it."""

    key: str
    sha256: str
    size: int
    created: bool


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


# obstore answers that no retry changes; anything else it raises (connection refused, reset,
# timeouts, 5xx after its own short retries) is the store being away: retried to the deadline.
_PERMANENT = (
    FileNotFoundError,  # obstore's not-found (its NotFoundError is never raised)
    AlreadyExistsError,
    PreconditionError,
    PermissionDeniedError,
    UnauthenticatedError,
    InvalidPathError,
    NotSupportedError,
    UnknownConfigurationKeyError,
)
# FileNotFoundError: obstore's 404, which is NoSuchBucket when the bucket is missing.
_RETRIED = (BotoConnectionError, HTTPClientError, ClientError, BaseError, FileNotFoundError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    # obstore appends the XML error document and a debug dump: the first line, up to the XML,
    # from its last " - " on ("Error performing GET <url> in 1ms - HTTP error: …").
    line = text.splitlines()[0].split(": <?xml")[0]
    return line.rsplit(" - ", 1)[-1][:300]


# The one text test left (fallback): obstore 0.12.1 reports some S3 refusals of our signature
# or key as a GenericError carrying only the text, with no type or status to test; typed
# refusals (PermissionDenied, Unauthenticated, botocore's 403) are recognised by type above.
# Pinned by tests/unit/test_transient_errors.py.
# obstore 0.12.1 reports a range the object does not hold (start at or past its end) as a
# GenericError carrying only the text: "… 416 Range Not Satisfiable: <Error><Code>InvalidRange".
# A range that runs past the end comes back short, without an error.
_RANGE = re.compile(r"\b416 Range Not Satisfiable\b|<Code>InvalidRange</Code>")
_REFUSED = re.compile(r"\b403 Forbidden\b|SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied")


def _refused(exc: BaseException) -> bool:
    """Whether the store refused our credentials (no retry helps)."""
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return True
    if isinstance(exc, ClientError):
        return _http_status(exc) == 403
    return isinstance(exc, GenericError) and bool(_REFUSED.search(str(exc)))


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 client failure is the store being away or slow (retry), by type."""
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        return _error_code(exc) in _RETRYABLE_CODES or _http_status(exc) >= 500
    if isinstance(exc, BaseError):
        return not isinstance(exc, _PERMANENT)
    return False


def client(settings: S3Settings) -> S3Store:
    """obstore's client for the bucket of `settings`, with its own retries off: each call
    sends one request, and `StoreRetry` decides whether to try again (docs/runtime.md)."""
    virtual = settings.addressing_style == "virtual"
    client_options: dict[str, Any] = {
        "allow_http": settings.endpoint.startswith("http://"),
        "pool_max_idle_per_host": str(settings.max_pool_connections),
        "connect_timeout": timedelta(seconds=settings.connect_timeout_s),
        "timeout": timedelta(seconds=settings.read_timeout_s),
    }
    ca = read_ca_bundle(settings)
    if ca is not None:
        client_options["root_certificate"] = ca
    return S3Store(
        settings.bucket,
        endpoint=(
            virtual_hosted_endpoint(settings.endpoint, settings.bucket)
            if virtual
            else settings.endpoint
        ),
        access_key_id=settings.access_key,
        secret_access_key=settings.secret_key.get_secret_value(),
        region=settings.region,
        virtual_hosted_style_request=virtual,
        client_options=client_options,  # type: ignore[arg-type]
        # No retries here: one layer retries S3 calls, StoreRetry (it classifies, logs each
        # attempt and keeps the deadline); obstore's own would multiply its attempts unseen.
        retry_config={
            "max_retries": 0,
            "retry_timeout": timedelta(seconds=settings.read_timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=50),
                "max_backoff": timedelta(seconds=1),
                "base": 2,
            },
        },
    )


class StoreRetry:
    """The one retry layer of S3 calls: a call that fails transiently (connection refused or
    reset, a timeout, a 5xx, throttling) is tried again with capped exponential backoff and
    jitter until the settings' deadline, one log line per failed attempt and one when the
    store is back; answers no retry changes (refused, no bucket, untrusted TLS) raise at once
    as one line. Neither obstore below it nor the runtime above it retries an S3 call again
    (docs/runtime.md "Retries")."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.bucket = settings.bucket
        self.attempts = 0  # requests tried by this store's calls (tests count them)

    def where(self) -> str:
        """The store and bucket, as error messages name them."""
        return f"S3 store at {self.settings.endpoint} (bucket {self.bucket})"

    def _permanent(self, what: str, exc: BaseException) -> StackError | None:
        """The one-line error for an answer no retry changes, or None if retrying may help."""
        s = self.settings
        if _refused(exc):
            return AccessDenied(
                f"{self.where()} refused the credentials of access key {s.access_key!r} for "
                f"{what}: {_first_line(exc)}; check MATTERFAB_S3_ACCESS_KEY and "
                "MATTERFAB_S3_SECRET_KEY"
            )
        if _bucket_missing(exc):
            return BucketMissing(
                f"bucket {self.bucket!r} does not exist on the S3 store at {s.endpoint}: "
                "create it (`make up` does locally) or set MATTERFAB_S3_BUCKET"
            )
        if _tls_failure(exc):
            return Refused(
                f"{self.where()}: TLS certificate not trusted for {what}: {_first_line(exc)}; "
                "set MATTERFAB_S3_CA_BUNDLE to the CA that signed the store's certificate"
            )
        return None

    async def __call__(
        self, what: str, call: Callable[[], Awaitable[T]], deadline_s: float | None = None
    ) -> T:
        """Run `call`, retrying transient failures with backoff until the deadline.

        One log line per failed attempt and one when the store answers again; answers that
        no retry changes (refused, no bucket, untrusted TLS) raise at once. `deadline_s`
        overrides the settings' retry deadline (0: one attempt).
        """
        s = self.settings
        deadline = time.monotonic() + (s.retry_deadline_s if deadline_s is None else deadline_s)
        backoff = Backoff(s.retry_initial_backoff_s, s.retry_max_backoff_s)
        began = time.monotonic()
        while True:
            self.attempts += 1
            try:
                result = await call()
            except _RETRIED as exc:
                permanent = self._permanent(what, exc)
                if permanent is not None:
                    raise permanent from exc
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    tried = (
                        f" after {backoff.attempts} attempts over {time.monotonic() - began:.0f}s"
                        if backoff.attempts > 1
                        else ""
                    )
                    raise Unreachable(
                        f"{self.where()} is unreachable for {what}{tried}: {_first_line(exc)}; "
                        f"{START_HINT}"
                    ) from exc
                log.warning(
                    "%s: %s failed (attempt %d: %s); next attempt in %.1fs",
                    self.where(),
                    what,
                    backoff.attempts,
                    _first_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if backoff.attempts:
                log.warning(
                    "%s: back for %s after %d failed attempts over %.1fs",
                    self.where(),
                    what,
                    backoff.attempts,
                    time.monotonic() - began,
                )
            return result


class BucketAdmin:
    """Bucket administration (create, once at `up`), through aioboto3: obstore does not cover
    it. Its client makes one attempt per request too; `StoreRetry` retries."""

    def __init__(self, settings: S3Settings, retry: StoreRetry):
        self.settings = settings
        self.bucket = settings.bucket
        self._retry = retry

    @asynccontextmanager
    async def _admin_client(self) -> AsyncIterator[Any]:
        """An aioboto3 client, for bucket administration only (made on demand: botocore's
        service models cost a service ~30 MB of memory it would never use otherwise)."""
        import aioboto3  # deliberately late, see above

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": self.settings.addressing_style},
            connect_timeout=self.settings.connect_timeout_s,
            read_timeout=self.settings.read_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        async with aioboto3.Session().client(
            "s3",
            endpoint_url=self.settings.endpoint,
            aws_access_key_id=self.settings.access_key,
            aws_secret_access_key=self.settings.secret_key.get_secret_value(),
            region_name=self.settings.region,
            config=config,
            verify=str(self.settings.ca_bundle) if self.settings.ca_bundle else None,
        ) as client:
            yield client

    async def ensure(self) -> None:
        """Create the bucket if it does not exist."""
        async with self._admin_client() as client:
            await self._ensure(client)

    async def _ensure(self, client: Any) -> None:
        async def head() -> bool:
            _SENT["head_bucket"].inc()
            try:
                await client.head_bucket(Bucket=self.bucket)
                return True
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES or _http_status(exc) == 404:
                    return False
                raise

        if await self._retry(f"head bucket {self.bucket}", head):
            return

        async def create() -> None:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            _SENT["create_bucket"].inc()
            try:
                await client.create_bucket(**kwargs)
            except ClientError as exc:
                if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

        await self._retry(f"create bucket {self.bucket}", create)


class ObjectStore:
    """One bucket of an S3-compatible store, through one reused, pooled client."""

    def __init__(self, settings: S3Settings):
        """A store on `settings`; use `ObjectStore.open` rather than this."""
        self.settings = settings
        self.bucket = settings.bucket
        self._store = client(settings)
        # The one retry layer of every call below (see `StoreRetry`).
        self._retry = StoreRetry(settings)

    def where(self) -> str:
        """The store and bucket, as error messages name them."""
        return self._retry.where()

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the store never creates it implicitly)."""
        await BucketAdmin(self.settings, self._retry).ensure()

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: S3Settings) -> AsyncIterator[ObjectStore]:
        """Open a store on `settings` for the duration of the block."""
        store = cls(settings)
        try:
            yield store
        finally:
            del store._store
            # obstore's runtime threads release the Python objects of finished calls a moment
            # after the call returns; let them, while the interpreter is surely alive.
            await asyncio.sleep(SETTLE_S)

    async def check(self, deadline_s: float | None = None) -> None:
        """Probe the store and bucket once (a one-key listing); the one-line error if not usable.

        Commands and long-running processes call this first: without it a missing bucket
        reads as "no such object" (a 404 on HEAD carries no reason).
        """

        async def probe() -> None:
            # One non-recursive listing of a prefix nothing is stored under: an empty answer
            # costs the store nothing, yet a missing bucket or refused key answers as such.
            _SENT["list"].inc()
            await obstore.list_with_delimiter_async(self._store, prefix=PROBE_PREFIX)

        await self._retry("a listing of the bucket", probe, deadline_s)

    async def put_if_absent(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Write `data` (and user `metadata`) at `key` if the key is free; False if taken."""
        attributes: dict[str, str] = {"Content-Type": content_type, **(metadata or {})}

        async def put() -> bool:
            _SENT["put"].inc()
            try:
                await obstore.put_async(
                    self._store, key, data, mode="create", attributes=attributes
                )
                return True
            except (AlreadyExistsError, PreconditionError):
                return False

        return await self._retry(f"put {key}", put)

    async def put_once(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Write `data` at `key` only if the key is free; same bytes again is a no-op.

        Raises IntegrityError if the key already holds different bytes.
        """
        digest = hashlib.sha256(data).hexdigest()
        if await self.put_if_absent(key, data, content_type):
            return StoredObject(key, digest, len(data), created=True)
        # The key is taken: by a redelivery of this very write (fine) or by different bytes
        # (a bug or a tampered store: alarm, never overwrite).
        existing = await self.get(key)
        if existing != data:
            raise IntegrityError(
                f"object {key} already exists with different content "
                f"(stored sha256 {hashlib.sha256(existing).hexdigest()}, new sha256 {digest}); "
                "write-once objects are never overwritten"
            )
        return StoredObject(key, digest, len(data), created=False)

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        deadline_s: float | None = None,
    ) -> StoredObject:
        """Write `data` at `key`, replacing any object there (for mutable objects only);
        `deadline_s` bounds the retries (0: one attempt, for writes that repeat anyway)."""

        async def put() -> None:
            _SENT["put"].inc()
            await obstore.put_async(
                self._store, key, data, mode="overwrite", attributes={"Content-Type": content_type}
            )

        await self._retry(f"put {key}", put, deadline_s)
        return StoredObject(key, hashlib.sha256(data).hexdigest(), len(data), created=True)

    async def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The object's bytes and user metadata, or None if there is no object at `key`."""

        async def get() -> tuple[bytes, dict[str, str]] | None:
            _SENT["get"].inc()
            try:
                response = await obstore.get_async(self._store, key)
                data = bytes(await response.bytes_async())
            except FileNotFoundError as exc:  # obstore's not-found is the builtin
                if _bucket_missing(exc):
                    raise
                return None
            metadata = {
                str(k).lower(): str(v)
                for k, v in response.attributes.items()
                if str(k) not in _STANDARD_ATTRIBUTES
            }
            return data, metadata

        return await self._retry(f"get {key}", get)

    async def get_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no object at `key`."""
        found = await self.get_with_metadata(key)
        return None if found is None else found[0]

    async def get(self, key: str) -> bytes:
        """The object's bytes; KeyError(key) if there is no object at `key`."""
        data = await self.get_or_none(key)
        if data is None:
            raise KeyError(key)
        return data

    async def get_range(self, key: str, offset: int, size: int) -> bytes | None:
        """Bytes `offset`..`offset+size-1` of the object at `key` (one GET with a Range header),
        or None if there is no object at `key`.

        A range the object does not hold (it ends before `offset + size`) comes back short
        (possibly empty), never retried: the caller's digest check names the mismatch.
        """
        if size == 0:
            return b"" if await self.exists(key) else None

        async def get() -> bytes | None:
            _SENT["get_range"].inc()
            try:
                data = await obstore.get_range_async(self._store, key, start=offset, length=size)
            except FileNotFoundError as exc:
                if _bucket_missing(exc):
                    raise
                return None
            except GenericError as exc:
                if _RANGE.search(str(exc)) is None:
                    raise
                return b""  # the object is shorter than the range (HTTP 416)
            return bytes(data)

        return await self._retry(f"get {key} bytes {offset}+{size}", get)

    async def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""

        async def head() -> bool:
            _SENT["head"].inc()
            try:
                await obstore.head_async(self._store, key)
                return True
            except FileNotFoundError:
                return False

        return await self._retry(f"head {key}", head)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, across all result pages, in lexical order."""
        folder = prefix.rpartition("/")[0]  # obstore lists folders; narrow to the prefix here

        async def list_all() -> list[str]:
            keys: list[str] = []
            _SENT["list"].inc()  # the first page (an empty listing is one request too)
            pages = 0
            async for page in obstore.list(self._store, prefix=folder or None, chunk_size=1000):
                pages += 1
                if pages > 1:  # S3 answers at most 1,000 keys per request
                    _SENT["list"].inc()
                keys.extend(m["path"] for m in page if m["path"].startswith(prefix))
            return sorted(keys)

        return await self._retry(f"list {prefix}", list_all)

    async def delete(self, key: str) -> None:
        """Remove the object at `key` (no error if absent); for tests and mutable objects."""

        async def delete() -> None:
            _SENT["delete"].inc()
            try:
                await obstore.delete_async(self._store, key)
            except FileNotFoundError as exc:
                if _bucket_missing(exc):
                    raise

        await self._retry(f"delete {key}", delete)
