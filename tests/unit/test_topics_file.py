"""deploy/topics.yaml matches DESIGN §3, and bad topic files are refused with the rule named."""

from __future__ import annotations

from pathlib import Path

import pytest

from matterfab.errors import StackError
from matterfab.topics import ALL_TOPICS, TopicSpec, load_topics

WEEK_MS = 7 * 24 * 3600 * 1000


def test_shipped_topics_match_the_design() -> None:
    specs = {s.name: s for s in load_topics()}
    assert {name: s.partitions for name, s in specs.items()} == {
        "mfg.work-orders": 3,
        "mfg.devices.allocated": 6,
        "mfg.devices.attested": 6,
        "mfg.images.ready": 6,
        "mfg.order-events": 3,
        "mfg.station-results": 6,
        "mfg.dac-ledger": 3,
        "mfg.dead-letter": 1,
        "mfg.dac.requests": 6,
        "mfg.dac.replies": 6,
    }
    assert set(specs) == set(ALL_TOPICS)
    assert specs["mfg.dac-ledger"].retention_ms == -1  # the audit trail is kept forever
    assert specs["mfg.dead-letter"].retention_ms > 4 * WEEK_MS
    assert all(s.retention_ms == -1 or s.retention_ms >= WEEK_MS for s in specs.values())


def test_topic_configs() -> None:
    spec = TopicSpec("t", 1, 1000, {"max.message.bytes": "2097152"})
    assert spec.topic_configs() == {"retention.ms": "1000", "max.message.bytes": "2097152"}


def test_topics_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - {name: only.one, partitions: 2, retention_ms: 1000}\n")
    monkeypatch.setenv("MATTERFAB_TOPICS_FILE", str(path))
    assert load_topics() == [TopicSpec("only.one", 2, 1000)]


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("topics: []\n", "non-empty `topics:` list"),
        ("topics:\n  - {name: 'bad name', partitions: 1}\n", "name must be"),
        ("topics:\n  - {name: a, partitions: 0}\n", "partitions must be an integer >= 1"),
        ("topics:\n  - {name: a, partitions: 1, retention_ms: -2}\n", "retention_ms must be"),
        ("topics:\n  - {name: a, partitions: 1}\n  - {name: a, partitions: 2}\n", "listed twice"),
        ("topics: [\n", "cannot read topics file"),
    ],
)
def test_bad_topics_file(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(StackError, match=rule):
        load_topics(path)
