"""The embedded broker's empty-fetch pause: each consumer's own fetch_max_wait_ms (kafka.py)."""

from __future__ import annotations

from aiokafka.consumer import fetcher

from matterfab import kafka
from matterfab.config import KafkaSettings
from matterfab.services.allocator.main import ORDER_FETCH_WAIT_MS


async def test_a_consumer_on_the_embedded_broker_waits_its_own_pause() -> None:
    embedded = KafkaSettings(bootstrap="127.0.0.1:1", embedded=True)
    plain = kafka.consumer(embedded, group_id=None)
    slow = kafka.consumer(embedded, group_id=None, fetch_max_wait_ms=ORDER_FETCH_WAIT_MS)
    assert getattr(fetcher.Fetcher._proc_fetch_request, "_matterfab_paced", False)
    assert kafka.empty_fetch_pause_s(plain._fetch_max_wait_ms) == kafka.EMPTY_FETCH_PAUSE_S
    assert kafka.empty_fetch_pause_s(slow._fetch_max_wait_ms) == 0.25
    assert kafka.empty_fetch_pause_s(60_000) == kafka.LONGEST_PAUSE_S
    # On Kafka nothing is set: aiokafka's own long poll (500 ms), which a record ends at once.
    real = kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:1"), group_id=None)
    assert real._fetch_max_wait_ms == 500


def test_a_stage_that_eases_polls_less_only_after_a_quiet_second() -> None:
    wait = int(1000 * kafka.EMPTY_FETCH_PAUSE_S)
    assert kafka.empty_fetch_pause_s(wait, idle_s=0.5, eases=True) == kafka.EMPTY_FETCH_PAUSE_S
    assert kafka.empty_fetch_pause_s(wait, idle_s=kafka.IDLE_AFTER_S, eases=True) == 0.2
    # Never for a consumer that did not ask (a station, the DAC requests), however quiet.
    assert kafka.empty_fetch_pause_s(wait, idle_s=3600, eases=False) == kafka.EMPTY_FETCH_PAUSE_S
    # A consumer that waits longer anyway keeps its own wait.
    assert kafka.empty_fetch_pause_s(ORDER_FETCH_WAIT_MS, idle_s=5, eases=True) == 0.25


async def test_ease_when_idle_marks_a_started_consumers_fetcher() -> None:
    consumer = kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:1", embedded=True), group_id=None)
    kafka.ease_when_idle(consumer)  # not started: no fetcher yet, nothing to mark
    assert consumer._fetcher is None

    class Fetcher:
        pass

    consumer._fetcher = Fetcher()
    kafka.ease_when_idle(consumer)
    assert consumer._fetcher._matterfab_eases is True
