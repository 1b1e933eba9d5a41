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
from matterfab.services.station import device_key, efuse, flashing, printing

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
    line_key: list[Path] = Field(
        default_factory=list,
        description="The line's private key PEM(s) that open sealed images (repeat during a "
        "rotation); none: `<state folder>/lines/<line>.pem` (line local on the local stack)",
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
    efuse_cmd: str | None = Field(
        None,
        description="eFuse burn command template for ecdsa-peripheral DAC keys "
        "(services/station/efuse.py): {efuse_key} {efuse_key_pem} {efuse_block} {chip} {port}",
    )
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
    # Labels (services/station/printing.py): printed right after each device is flashed.
    print_zpl: str | None = Field(
        None, description="Label printer HOST:PORT taking raw ZPL over TCP (port 9100)"
    )
    print_cmd: str | None = Field(
        None, description="Label print command template: {label_zpl} {label_pdf} {label_png} ..."
    )
    print_attempts: int = Field(3, ge=1, le=10, description="Tries per label before reporting it")
    print_timeout: float = Field(10.0, gt=0, le=300, description="Seconds one print may take")
    # dac_storage device-key (station/device_key.py): the device's CSR out, its DAC back in.
    csr_cmd: str | None = Field(None, description="Command printing the device's CSR")
    cert_cmd: str | None = Field(None, description="Command writing the DAC to the device")
    dac_timeout: float = Field(
        device_key.DEFAULT_DAC_TIMEOUT_S, gt=0, description="Seconds to wait for the DAC"
    )

    @field_validator("flash_cmd", "eol_cmd")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(flashing.check_template, value)
        return value

    @field_validator("print_zpl")
    @classmethod
    def _printer(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(printing.parse_address, value)
        return value

    @field_validator("print_cmd")
    @classmethod
    def _print_template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(printing.check_template, value)
        return value

    @field_validator("efuse_cmd")
    @classmethod
    def _efuse_template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(efuse.check_template, value)
        return value

    @field_validator("csr_cmd")
    @classmethod
    def _csr_template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(
                lambda t: device_key.check_template("csr_cmd", t, device_key.CSR_PLACEHOLDERS),
                value,
            )
        return value

    @field_validator("cert_cmd")
    @classmethod
    def _cert_template(cls, value: str | None) -> str | None:
        if value is not None:
            _rule(
                lambda t: device_key.check_template("cert_cmd", t, device_key.CERT_PLACEHOLDERS),
                value,
            )
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
        if (self.csr_cmd is None) != (self.cert_cmd is None):
            raise ValueError("give both csr_cmd and cert_cmd (device-key orders), or neither")
        if self.merged and self.out is None:
            raise ValueError("merged needs out: a merged image is written to a folder")
        if self.print_zpl is not None and self.print_cmd is not None:
            raise ValueError("give at most one of print_zpl (a printer) or print_cmd (a command)")
        return self

    @property
    def worst_case_s(self) -> float:
        """The longest one image may take here: every attempt times out, every backoff."""
        backoffs = sum(min(self.backoff * 2**i, 30.0) for i in range(self.max_attempts - 1))
        labels = self.print_attempts * (self.print_timeout + printing.MAX_BACKOFF_S)
        if self.print_zpl is None and self.print_cmd is None:
            labels = 0.0
        worst = self.max_attempts * self.timeout + backoffs + labels + 60.0  # + downloads, records
        if self.csr_cmd is not None:  # device-key: csr-cmd, the signer's wait, cert-cmd
            worst += self.max_attempts * (2 * self.timeout + self.dac_timeout) + backoffs
        return worst

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
