"""`serve` runs every service, the station included (issue #23): `Needs` says what a process
takes beyond Kafka and the store. A station is served without the key-encryption key, and its
setup runs before anything is waited for (its line keys are local files)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from matterfab.errors import StackError
from matterfab.runtime import BatchSpec, Context, Needs, serve
from matterfab.services.station import main as station_main


class SetupRan(Exception):
    """Ends `serve` from inside the setup, once the test has looked at the context."""


@pytest.fixture
def unreachable_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Kafka and a store nobody answers at, and no KEK anywhere."""
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("MATTERFAB_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("MATTERFAB_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("MATTERFAB_S3_SECRET_KEY", "s")
    monkeypatch.delenv("MATTERFAB_KEK", raising=False)
    monkeypatch.setenv("MATTERFAB_KEK_FILE", str(tmp_path / "no-kek.b64"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:  # serve configures the root logger for its process
        root.handlers[:], root.level = handlers, level


async def test_a_process_without_the_kek_is_set_up_before_any_wait(
    unreachable_stack: None,
) -> None:
    seen: list[Context] = []

    async def setup(ctx: Context) -> BatchSpec[object]:
        seen.append(ctx)
        with pytest.raises(RuntimeError, match="t is served without the key-encryption key"):
            ctx.wrapper  # noqa: B018
        raise SetupRan

    with pytest.raises(SetupRan):
        await serve("t", setup, Needs(kek=False, ready_before_setup=False))
    (ctx,) = seen
    assert ctx.kafka.bootstrap == "127.0.0.1:1" and not ctx.health.ready


async def test_a_pipeline_service_needs_the_kek(unreachable_stack: None) -> None:
    async def setup(ctx: Context) -> BatchSpec[object]:
        raise AssertionError("set up without its KEK")

    with pytest.raises(StackError, match=r"no-kek\.b64"):
        await serve("t", setup, Needs(ready_before_setup=False))


def test_the_station_is_served_without_the_kek_and_without_waiting_first() -> None:
    assert station_main.STATION_NEEDS == Needs(kek=False, ready_before_setup=False)
