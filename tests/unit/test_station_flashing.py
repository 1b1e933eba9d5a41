"""Station pure parts: command templates, MAC parsing, synthetic MACs, settings."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matterfab.errors import InvalidInput
from matterfab.services.station import flashing
from matterfab.services.station.config import load_settings

ESPTOOL = "esptool.py --port {port} write_flash {offset} {partition}"


def test_render_fills_each_argument() -> None:
    argv = flashing.render_command(
        ESPTOOL, {"port": "/dev/ttyUSB0", "offset": "0x3E0000", "partition": "/tmp/p.bin"}
    )
    assert argv == ["esptool.py", "--port", "/dev/ttyUSB0", "write_flash", "0x3E0000", "/tmp/p.bin"]


def test_values_cannot_inject_arguments() -> None:
    argv = flashing.render_command(
        "flash {serial_num} --id={device_id}", {"serial_num": "a b; rm -rf /", "device_id": "O/1"}
    )
    assert argv == ["flash", "a b; rm -rf /", "--id=O/1"]


def test_quoted_template_arguments_stay_whole() -> None:
    argv = flashing.render_command("sh -c 'flash {partition}'", {"partition": "/p"})
    assert argv == ["sh", "-c", "flash /p"]


@pytest.mark.parametrize(
    ("template", "rule"),
    [
        ("flash {nope}", "unknown placeholder {nope}"),
        ("flash {partition!r}", "must be plain"),
        ("flash {partition:>10}", "must be plain"),
        ("flash {partition", "malformed placeholder"),
        ("flash 'open", "like a shell line"),
        ("   ", "must name a command"),
    ],
)
def test_bad_templates_name_the_rule(template: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.check_template(template)
    assert exc.value.field == "flash_cmd"
    assert rule in str(exc.value)


def test_missing_value_is_named() -> None:
    with pytest.raises(InvalidInput, match=r"\{keys\} has no value"):
        flashing.render_command("flash {partition} {keys}", {"partition": "/p", "keys": None})


ESPTOOL_OUTPUT = """esptool.py v4.7.0
Serial port /dev/ttyUSB0
Chip is ESP32-C3 (QFN32) (revision v0.4)
MAC: 24:0A:C4:12:34:56
Uploading stub...
Hash of data verified.
"""


def test_default_pattern_reads_esptool_mac() -> None:
    pattern = flashing.compile_mac_pattern(flashing.DEFAULT_MAC_PATTERN)
    assert flashing.parse_mac(ESPTOOL_OUTPUT, pattern) == "24:0a:c4:12:34:56"


def test_absent_mac_is_none() -> None:
    pattern = flashing.compile_mac_pattern(flashing.DEFAULT_MAC_PATTERN)
    assert flashing.parse_mac("Hash of data verified.", pattern) is None


@pytest.mark.parametrize(
    ("pattern", "output"),
    [
        (r"mac=(\S+)", "ok mac=24-0a-c4-12-34-56"),  # first group
        (r"(?P<x>id) (?P<mac>[0-9a-f.]+)", "id 240a.c412.3456"),  # named group wins
        (r"[0-9A-F]{12}", "chip 240AC4123456 ok"),  # whole match
    ],
)
def test_custom_patterns(pattern: str, output: str) -> None:
    assert flashing.parse_mac(output, re.compile(pattern)) == "24:0a:c4:12:34:56"


def test_matched_text_that_is_no_mac_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="6 bytes in hex"):
        flashing.parse_mac("MAC: 24:0a", re.compile(r"MAC: (\S+)"))


def test_bad_regex_is_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.compile_mac_pattern("(")
    assert exc.value.field == "mac_pattern"


def test_synthetic_mac_layout() -> None:
    assert flashing.synthetic_mac("02:aa:01", "O", 0x010203) == "02:aa:01:01:02:03"
    mac = flashing.synthetic_mac(None, "ORDER-1", 5)
    assert mac.startswith("02:") and mac.endswith(":00:00:05")


@given(st.text(min_size=1, max_size=20), st.integers(0, 999_999), st.integers(0, 999_999))
def test_synthetic_macs_differ_within_an_order(order: str, i: int, j: int) -> None:
    a, b = flashing.synthetic_mac(None, order, i), flashing.synthetic_mac(None, order, j)
    assert flashing.normalize_mac(a) == a
    assert (a == b) == (i == j)


@pytest.mark.parametrize("prefix", ["", "0", "02:aa:01:02", "zz"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        flashing.synthetic_mac(prefix, "O", 1)
    assert exc.value.field == "test_mac_prefix"


def test_settings_need_exactly_one_output() -> None:
    with pytest.raises(InvalidInput, match="exactly one of out"):
        load_settings(station_id="s", line="l")
    with pytest.raises(InvalidInput, match="exactly one of out"):
        load_settings(station_id="s", line="l", out="/tmp/x", flash_cmd="flash {partition}")


def test_settings_report_every_broken_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_STATION_LINE", "bad line")
    with pytest.raises(InvalidInput) as exc:
        load_settings(station_id="s", flash_cmd="x {nope}", fail_rate=2.0)
    fields = {e.field for e in exc.value.errors}
    assert fields == {"line", "flash_cmd", "fail_rate"}


def test_settings_from_env_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_STATION_LINE", "L1")
    monkeypatch.setenv("MATTERFAB_STATION_MAX_ATTEMPTS", "5")
    s = load_settings(station_id="s1", out="/tmp/x", max_attempts=2, timeout=None)
    assert (s.line, s.max_attempts, s.timeout, s.group_id) == (
        "L1",
        2,
        120.0,
        "matterfab-station-L1",
    )
