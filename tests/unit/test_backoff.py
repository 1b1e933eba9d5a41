"""Capped exponential backoff with jitter, and the one-line-per-attempt outage log."""

from __future__ import annotations

import logging
import random

import pytest

from matterfab.backoff import Backoff, Outage


def test_delays_double_from_0_2_to_10_with_jitter() -> None:
    backoff = Backoff(_rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        base = min(0.2 * 2**attempt, 10.0)
        assert base * 0.8 <= delay <= min(base * 1.2, 10.0), (attempt, delay)
    assert delays[-1] <= 10.0 and backoff.attempts == 10
    assert len({round(d, 6) for d in delays[6:]}) > 1  # capped delays still spread
    backoff.reset()
    assert backoff.next_delay() <= 0.24


def test_outage_logs_one_line_per_attempt_and_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("Kafka at k:9092", logging.getLogger("test.outage"))
    outage.recovered()  # no outage: nothing to say
    with caplog.at_level(logging.WARNING, "test.outage"):
        for _ in range(3):
            outage.failed("connection refused")
        assert outage.down
        outage.recovered()
    lines = [r.getMessage() for r in caplog.records]
    for n, line in enumerate(lines[:3], 1):
        assert line.startswith(f"Kafka at k:9092: attempt {n} failed: connection refused; next")
    assert lines[3].startswith("Kafka at k:9092: back after 3 failed attempts over ")
    assert len(lines) == 4 and not outage.down
