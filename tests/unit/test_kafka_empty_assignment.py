"""An empty member assignment from the broker means no partitions, not a crash (kafka.py)."""

from __future__ import annotations

from io import BytesIO

from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberAssignment

from matterfab import kafka
from matterfab.config import KafkaSettings


async def test_empty_assignment_bytes_decode_as_no_partitions() -> None:
    kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:9"), "t", group_id="g")  # installs it
    for empty in (b"", BytesIO(b"")):
        assert ConsumerProtocol.ASSIGNMENT.decode(empty).partitions() == []


async def test_a_real_assignment_decodes_as_before_and_the_patch_installs_once() -> None:
    kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:9"), "t", group_id="g")
    kafka.consumer(KafkaSettings(bootstrap="127.0.0.1:9"), "t", group_id="g")
    raw = ConsumerProtocolMemberAssignment(0, [("t", [0, 2])], b"u").encode()
    got = ConsumerProtocol.ASSIGNMENT.decode(raw)
    assert [(tp.topic, tp.partition) for tp in got.partitions()] == [("t", 0), ("t", 2)]
    assert got.user_data == b"u"
