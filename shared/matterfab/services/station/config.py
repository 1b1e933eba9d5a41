"""A station's settings: env `MATTERFAB_STATION_…`, overridden by `station run` options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from matterfab.errors import InvalidInput
from matterfab.messages.base import ORDER_ID_PATTERN
from matterfab.messages.codec import validation_errors
from matterfab.services import registry
from matterfab.services.station import flashing

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class StationSettings(BaseSettings):
    """What one station flashes, how, and how hard it tries before giving an image back."""

    model_config = SettingsConfigDict(env_prefix="MATTERFAB_STATION_", extra="ignore")

    station_id: str = Field(pattern=NAME_PATTERN, description="This station's name in results")
    line: str = Field(
        pattern=NAME_PATTERN,
        description="Production line: stations of a line share consumer group "
        "`matterfab-station-<line>`, so each image goes to exactly one of them",
    )
    order: str | None = Field(
        None,
        pattern=ORDER_ID_PATTERN,
        description="Flash only this order's images; others are skipped (and committed past)",
    )
    out: Path | None = Field(None, description="Write images to <out>/<order_id>/<index>/")
    merged: bool = Field(
        False,
        description="With out, in orders with a firmware bundle: also write merged.bin, the "
        "whole flash as one image (esptool merge-bin)",
    )
    flash_cmd: str | None = Field(None, description="Flash command template (see flashing.py)")
    port: str | None = Field(None, description="Value of {port}, e.g. /dev/ttyUSB0")
    eol_cmd: str | None = Field(
        None,
        description="End-of-line test template ({device_id} {serial_num} {port}), run after a "
        "flash; a non-zero exit scraps the device (services/station/eol.py)",
    )
    offset: str | None = Field(
        None, description="Value of {offset} when the image does not name one, e.g. 0x3E0000"
    )
    mac_pattern: str = Field(
        flashing.DEFAULT_MAC_PATTERN, description="Regex finding the MAC in the command output"
    )
    test_mac_prefix: str | None = Field(
        None, description="1..3 leading bytes of the synthetic MACs of folder output"
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Flash attempts per image here")
    timeout: float = Field(120.0, gt=0, description="Seconds one flash command may take")
    backoff: float = Field(0.5, ge=0, description="Seconds before the 2nd attempt (doubling)")
    max_requeues: int = Field(
        3, ge=0, description="Times an image goes back to the line before it fails for good"
    )
    # TEST KNOB: the probability that a flash attempt fails on purpose, to exercise retries,
    # re-queues and final failures end to end. Leave at 0 on a real line.
    fail_rate: float = Field(0.0, ge=0.0, le=1.0)
    batch: int = Field(
        1, ge=1, le=500, description="Images per commit (1: commit after every result)"
    )
    concurrency: int = Field(1, ge=1, le=64, description="Images flashed at once")
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @field_validator("flash_cmd", "eol_cmd")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(flashing.check_template, value)
        return value

    @field_validator("mac_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        _rule(flashing.compile_mac_pattern, value)
        return value

    @field_validator("test_mac_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(flashing.parse_mac_prefix, value)
        return value

    @model_validator(mode="after")
    def _one_output(self) -> StationSettings:
        if (self.out is None) == (self.flash_cmd is None):
            raise ValueError("give exactly one of out (a folder) or flash_cmd (a command)")
        if self.merged and self.out is None:
            raise ValueError("merged needs out: a merged image is written to a folder")
        return self

    @property
    def worst_case_s(self) -> float:
        """The longest one image may take here: every attempt times out, every backoff."""
        backoffs = sum(min(self.backoff * 2**i, 30.0) for i in range(self.max_attempts - 1))
        return self.max_attempts * self.timeout + backoffs + 60.0  # + downloads and records

    @property
    def group_id(self) -> str:
        """The line's consumer group."""
        return f"{registry.group_id('station')}-{self.line}"


def _rule(check: Callable[[str], Any], value: str) -> None:
    """Run a flashing check; its rule becomes the field's validation message."""
    try:
        check(value)
    except InvalidInput as exc:
        raise ValueError(exc.errors[0].message) from None


def load_settings(**overrides: Any) -> StationSettings:
    """Settings from the environment, with non-None `overrides` (command-line options) on top.

    Raises InvalidInput naming every broken setting.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return StationSettings(**given)
    except ValidationError as exc:
        raise InvalidInput(validation_errors(exc)) from None
