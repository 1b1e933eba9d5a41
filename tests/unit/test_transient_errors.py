"""What counts as transient (retry without end) is decided by exception type, not by name or
text; the one text fallback (obstore's untyped refusals) is pinned here."""

from __future__ import annotations

import aiohttp
import pytest
from aiokafka.errors import KafkaConnectionError, RequestTimedOutError
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from obstore.exceptions import GenericError, PermissionDeniedError

from matterfab import runtime, s3
from matterfab.errors import InvalidInput, Unreachable


@pytest.mark.parametrize(
    "exc",
    [
        Unreachable("Kafka at x is unreachable"),
        ConnectionRefusedError(),
        TimeoutError(),
        KafkaConnectionError(),
        RequestTimedOutError(),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        aiohttp.ClientPayloadError("connection lost mid-body"),
        aiohttp.ServerDisconnectedError(),
        GenericError("Error performing GET: connection refused"),
    ],
)
def test_transient_by_type(exc: BaseException) -> None:
    assert runtime.is_transient(exc)


class ConnectionTimeoutLookalike(Exception):
    """Named like a transient failure, but not one: names no longer decide."""


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionTimeoutLookalike(),
        ValueError("Connect"),
        InvalidInput([]),
        PermissionDeniedError("403"),
    ],
)
def test_not_transient(exc: BaseException) -> None:
    assert not runtime.is_transient(exc)


def test_refusals_typed_and_the_one_text_fallback() -> None:
    assert s3._refused(PermissionDeniedError("no"))
    for text in ("HTTP status client error (403 Forbidden)", "<Code>SignatureDoesNotMatch</Code>"):
        assert s3._refused(GenericError(f"Error performing PUT - {text}"))
    assert not s3._refused(GenericError("Error performing PUT - connection refused"))
    assert not s3._refused(ValueError("403 Forbidden"))  # text counts only on obstore's untyped


def test_a_range_past_the_end_is_told_apart_from_a_transient_failure() -> None:
    """obstore 0.12.1's text for S3's 416 (ObjectStore.get_range answers short, no retry);
    a connection failure of a ranged GET is not it (retried)."""
    from matterfab.s3 import _RANGE

    answered = (
        "Generic S3 error: Error performing GET http://127.0.0.1:9000/b/k in 7ms - Server "
        'returned non-2xx status code: 416 Range Not Satisfiable: <?xml version="1.0"?>'
        "<Error><Code>InvalidRange</Code><Message>The requested range is not satisfiable"
    )
    assert _RANGE.search(answered)
    refused = "Generic S3 error: Error performing GET http://127.0.0.1:9000/b/k in 1ms - error"
    assert not _RANGE.search(refused + " sending request: Connection refused")
