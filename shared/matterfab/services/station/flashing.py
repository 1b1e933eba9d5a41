"""Pure parts of a station: flash-command templates, MAC parsing, deterministic test MACs.

A flash command is a template such as
`esptool.py --port {port} write_flash {offset} {partition}`. It is split into arguments like a
POSIX shell would (`shlex`) *before* the placeholders are filled, and run without a shell, so a
value (a path, a serial number) can never inject an argument or a command.

For an order with a firmware bundle, `{flash_args}` stands alone as an argument and becomes
every `offset file` pair of the device, in flash order (`device_files`): bootloader, partition
table, app, extras, esp_secure_cert (when the device has one), NVS factory partition; so
`esptool --chip {chip} -p {port} write-flash {flash_args}` programs a blank module in one run.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matterfab.errors import invalid
from matterfab.firmware import LoadedBundle

PLACEHOLDERS = (
    "partition",
    "keys",
    "offset",
    "port",
    "serial_num",
    "device_id",
    "flash_args",
    "chip",
    "secure_cert",
)
"""Names a flash command may use: the image files, where to flash, and which device it is."""
LIST_PLACEHOLDERS = ("flash_args",)  # become several arguments: must be a whole argument

# esptool prints `MAC: 24:0a:c4:12:34:56` when it connects to the chip.
DEFAULT_MAC_PATTERN = r"MAC:\s*(?P<mac>(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2})"

TEST_MAC_PREFIX = "02"  # locally administered, unicast (IEEE 802: bit 1 of the first octet set)
_MAC_BYTES = 6
_INDEX_BYTES = 3  # a device index is < 1_000_000 < 2**24


def _fields(arg: str) -> list[str]:
    """Placeholder names used in one argument; refuses conversions and format specs."""
    names = []
    try:
        parsed = list(string.Formatter().parse(arg))
    except ValueError as exc:
        raise invalid("flash_cmd", f"malformed placeholder in {arg!r} ({exc})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise invalid("flash_cmd", f"unknown placeholder {{{name}}}; allowed: {allowed}")
        if spec or conversion:
            raise invalid("flash_cmd", f"placeholder {{{name}}} must be plain (no ! or :)")
        if name in LIST_PLACEHOLDERS and arg != "{" + name + "}":
            raise invalid(
                "flash_cmd", f"placeholder {{{name}}} must be a whole argument (it is several)"
            )
        names.append(name)
    return names


def check_template(template: str) -> list[str]:
    """Split a flash-command template into arguments, checking every placeholder."""
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise invalid("flash_cmd", f"must split into arguments like a shell line ({exc})") from None
    if not args:
        raise invalid("flash_cmd", "must name a command to run")
    for arg in args:
        _fields(arg)
    return args


def render_command(template: str, values: Mapping[str, str | Sequence[str] | None]) -> list[str]:
    """The argv of a flash command: each template argument with its placeholders filled.

    A placeholder whose value is None (e.g. `{keys}` for an image without an XTS keys
    partition, `{port}` on a station configured without one, `{flash_args}` for an order
    without a firmware bundle) is an error naming it. `{flash_args}` becomes its arguments.
    """
    argv: list[str] = []
    for arg in check_template(template):
        names = _fields(arg)
        for name in names:
            if values.get(name) is None:
                raise invalid("flash_cmd", f"placeholder {{{name}}} has no value for this image")
        if names and names[0] in LIST_PLACEHOLDERS:
            argv.extend(values[names[0]] or ())
            continue
        argv.append(arg.format(**{k: v for k, v in values.items() if isinstance(v, str)}))
    return argv


@dataclass(frozen=True)
class DeviceImage:
    """Everything one device gets: its own objects and, in a bundle order, every flash file."""

    partition: bytes
    keys: bytes | None = None
    secure_cert: bytes | None = None
    chip: str | None = None  # from the bundle
    files: tuple[FlashFile, ...] = ()  # the bundle order's files in flash order; () without


@dataclass(frozen=True)
class FlashFile:
    """One file of a device's flash and where it goes."""

    offset: int
    name: str  # its file name in the device's folder
    data: bytes


def device_files(
    bundle: LoadedBundle, partition: bytes, secure_cert: bytes | None = None
) -> list[FlashFile]:
    """Every file a device of a bundle order gets, in flash order (the module docstring).

    The factory partition and esp_secure_cert go where the bundle's table puts them; the
    allocator checked that the table has them, and `firmware add` that nothing overlaps.
    """
    b = bundle.bundle
    files = [
        FlashFile(f.offset, f.name, bundle.blobs[f.name])
        for role in ("bootloader", "partition-table", "app", "extra")
        for f in sorted(b.files, key=lambda f: f.offset)
        if f.role == role
    ]
    if secure_cert is not None:
        cert = bundle.partition(b.secure_cert_partition)
        if cert is None:
            raise invalid("firmware", f"bundle {b.name!r} has no {b.secure_cert_partition!r}")
        if len(secure_cert) > cert.size:
            raise invalid("secure_cert", f"is {len(secure_cert)} bytes; partition {cert} is not")
        files.append(FlashFile(cert.offset, "esp_secure_cert.bin", secure_cert))
    fctry = bundle.partition(b.factory_partition)
    if fctry is None:
        raise invalid("firmware", f"bundle {b.name!r} has no factory partition")
    if len(partition) > fctry.size:
        raise invalid("partition", f"is {len(partition)} bytes; partition {fctry} is smaller")
    files.append(FlashFile(fctry.offset, "partition.bin", partition))
    return files


def device_image(
    bundle: LoadedBundle | None,
    partition: bytes,
    keys: bytes | None = None,
    secure_cert: bytes | None = None,
) -> DeviceImage:
    """A device's image; with a bundle, every file it gets in flash order and the chip."""
    if bundle is None:
        return DeviceImage(partition, keys, secure_cert)
    files = tuple(device_files(bundle, partition, secure_cert))
    return DeviceImage(partition, keys, secure_cert, bundle.bundle.chip, files)


def flash_args(files: Sequence[FlashFile], paths: Mapping[str, str]) -> list[str]:
    """`{flash_args}`: `offset path` for every file, in flash order (`paths` by file name)."""
    return [arg for f in files for arg in (f"0x{f.offset:X}", paths[f.name])]


def flash_args_text(files: Sequence[FlashFile]) -> str:
    """The `flash_args` file of a device folder: one `offset file` line per file, in order.

    esptool reads it as `esptool --chip CHIP write-flash $(cat flash_args)` from the folder.
    """
    return "".join(f"0x{f.offset:X} {f.name}\n" for f in files)


def merged_image(chip: str, files: Sequence[FlashFile]) -> bytes:
    """One whole-flash image (erased bytes 0xFF between files) made by esptool's merge-bin.

    Flash mode, frequency and size are kept as the bundle's bootloader has them.
    """
    from esptool.cmds import merge_bin  # late: esptool is only needed for --merged
    from esptool.logger import log

    log.set_verbosity("silent")  # merge-bin prints progress to stdout; the station logs
    image = merge_bin([(f.offset, f.data) for f in files], chip)
    assert image is not None  # no output file: merge_bin returns the bytes
    return image


def compile_mac_pattern(pattern: str) -> re.Pattern[str]:
    """Compile the regular expression that finds the MAC in a flash command's output."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise invalid("mac_pattern", f"must be a valid regular expression ({exc})") from None


def normalize_mac(text: str) -> str:
    """A MAC as `aa:bb:cc:dd:ee:ff` from any of `AA:BB:..`, `aa-bb-..`, `aabb.ccdd.eeff`."""
    digits = re.sub(r"[:\-.\s]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{12}", digits):
        raise invalid("mac", f"must be 6 bytes in hex (e.g. aa:bb:cc:dd:ee:ff), got {text!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_mac(output: str, pattern: re.Pattern[str]) -> str | None:
    """The device MAC in a flash command's output, normalized; None if the pattern is absent.

    The MAC is the pattern's group `mac` if it has one, else its first group, else the whole
    match. The first match wins (esptool prints the MAC once, before writing).
    """
    found = pattern.search(output)
    if found is None:
        return None
    if "mac" in pattern.groupindex:
        text = found.group("mac")
    elif pattern.groups:
        text = found.group(1)
    else:
        text = found.group(0)
    return normalize_mac(text or "")


def parse_mac_prefix(prefix: str) -> bytes:
    """The 1 to 3 leading bytes of test MACs, written as hex pairs (`02`, `02:4d:46`)."""
    digits = re.sub(r"[:\-.]", "", prefix).lower()
    if not re.fullmatch(r"([0-9a-f]{2}){1,3}", digits):
        raise invalid(
            "test_mac_prefix", f"must be 1 to 3 bytes in hex, e.g. 02:4d:46; got {prefix!r}"
        )
    return bytes.fromhex(digits)


def synthetic_mac(prefix: str | None, order_id: str, index: int) -> str:
    """A deterministic MAC for a device written to a folder (no chip to read one from).

    Layout: the prefix (default `02`, locally administered), then bytes of
    SHA-256(order_id) up to 3 bytes, then the index in 3 bytes (big-endian). Devices of one
    order never share a MAC; two orders do only if their hashes collide (1 in 65536 with the
    default prefix; give each line its own 3-byte prefix to rule it out).
    """
    head = parse_mac_prefix(prefix if prefix is not None else TEST_MAC_PREFIX)
    if not 0 <= index < 1 << (8 * _INDEX_BYTES):
        raise invalid("index", f"must be below {1 << (8 * _INDEX_BYTES)} for a test MAC")
    fill = hashlib.sha256(order_id.encode()).digest()[: _MAC_BYTES - _INDEX_BYTES - len(head)]
    raw = head + fill + index.to_bytes(_INDEX_BYTES, "big")
    return ":".join(f"{b:02x}" for b in raw)


__all__ = [
    "DEFAULT_MAC_PATTERN",
    "PLACEHOLDERS",
    "DeviceImage",
    "FlashFile",
    "check_template",
    "compile_mac_pattern",
    "device_files",
    "device_image",
    "flash_args",
    "flash_args_text",
    "merged_image",
    "normalize_mac",
    "parse_mac",
    "parse_mac_prefix",
    "render_command",
    "synthetic_mac",
]
