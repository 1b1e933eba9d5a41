"""An empty member assignment from the broker means no partitions, not a crash (kafka.py)."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberAssignment

from matterfab import config, kafka
from matterfab.config import KafkaSettings


async def test_empty_assignment_bytes_decode_as_no_partitions() -> None:
    kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:9", embedded=True), "t", group_id="g")
    for empty in (b"", BytesIO(b"")):
        assert ConsumerProtocol.ASSIGNMENT.decode(empty).partitions() == []


async def test_a_real_assignment_decodes_as_before_and_the_patch_installs_once() -> None:
    embedded = KafkaSettings(bootstrap="127.0.0.1:9", embedded=True)
    kafka.consumer(embedded, "t", group_id="g")
    kafka.consumer(embedded, "t", group_id="g")
    raw = ConsumerProtocolMemberAssignment(0, [("t", [0, 2])], b"u").encode()
    got = ConsumerProtocol.ASSIGNMENT.decode(raw)
    assert [(tp.topic, tp.partition) for tp in got.partitions()] == [("t", 0), ("t", 2)]
    assert got.user_data == b"u"


async def test_producers_are_idempotent_on_kafka_and_not_on_the_embedded_broker() -> None:
    for embedded, idempotent in ((False, True), (True, False)):
        producer = kafka.producer(KafkaSettings(bootstrap="127.0.0.1:9", embedded=embedded))
        try:
            # PRIVATE (aiokafka 0.14.0): an idempotent producer has a transaction manager.
            assert (producer._txn_manager is not None) is idempotent
        finally:
            await producer.stop()


def test_the_local_stack_settings_say_the_broker_is_embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MATTERFAB_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("MATTERFAB_KAFKA_EMBEDDED", raising=False)
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "kafka:9092")
    assert config.load_kafka_settings().embedded is False
    monkeypatch.setenv("MATTERFAB_KAFKA_EMBEDDED", "1")
    assert config.load_kafka_settings().embedded is True
    monkeypatch.delenv("MATTERFAB_KAFKA_BOOTSTRAP")
    monkeypatch.delenv("MATTERFAB_KAFKA_EMBEDDED")
    monkeypatch.setenv("MATTERFAB_HOME", str(tmp_path))
    (tmp_path / config.STACK_FILE).write_text(json.dumps({"bootstrap": "127.0.0.1:19092"}))
    assert config.load_kafka_settings().embedded is True  # the local stack's broker
