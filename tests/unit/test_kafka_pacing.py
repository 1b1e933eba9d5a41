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
