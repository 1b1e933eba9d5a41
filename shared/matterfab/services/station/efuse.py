"""Burn a device's DAC key into an eFuse block (secure_cert key "ecdsa-peripheral").

On chips with an ECDSA peripheral (ESP32-H2, -P4, -C5, -C61, -S31) the DAC key lives in a
read-protected eFuse block; the esp_secure_cert image only names the block (SEC_CFG) and holds
no key bytes (matter/secure_cert.py). The builder stores the key as `efuse_key.bin` (the raw
32-byte scalar, a secret like the factory partition of a factory-nvs order); the station burns
it with `station run --efuse-cmd TEMPLATE` after the flash, for example

    espefuse --chip {chip} --port {port} --do-not-confirm \
        burn-key {efuse_block} {efuse_key_pem} ECDSA_KEY

Placeholders: `{efuse_key}` the 32-byte key file, `{efuse_key_pem}` the same key as PKCS#8 PEM
(espefuse 4 and later read ECDSA keys only from PEM), `{efuse_block}` the block name
(`BLOCK_KEY<n>`, from the image's SEC_CFG entry), `{chip}` and `{port}`. The key files live in
a private temporary folder (mode 0700) for the duration of the command and are deleted after.

Production needs the block read-protected, which espefuse does by default for ECDSA_KEY: a
template with `--no-read-protect` (what esp-matter-mfg-tool 1.0.29 passes) is refused. A burn
is irreversible, so its failure is final for the image: it is not re-queued to another board,
which could then carry the same key as a board that half-burned it.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab.errors import InvalidInput, invalid
from matterfab.matter import secure_cert
from matterfab.services.station import commands

FIELD = "efuse_cmd"
PLACEHOLDERS = ("efuse_key", "efuse_key_pem", "efuse_block", "chip", "port")
FORBIDDEN = ("--no-read-protect",)  # a DAC key must never be readable back from the chip


class BurnFailed(Exception):
    """The burn command failed; the message is the reason reported to the line."""


def check_template(template: str) -> list[str]:
    """Split an eFuse command template into arguments, checking placeholders and flags."""
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise invalid(FIELD, f"must split into arguments like a shell line ({exc})") from None
    if not args:
        raise invalid(FIELD, "must name a command to run")
    for arg in args:
        for flag in FORBIDDEN:
            if flag in arg:
                raise invalid(
                    FIELD, f"must not use {flag}: the DAC key block must be read-protected"
                )
    try:
        _render(args, dict.fromkeys(PLACEHOLDERS, "x"))
    except (KeyError, ValueError, IndexError) as exc:
        allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise invalid(FIELD, f"bad placeholder ({exc}); allowed: {allowed}") from None
    return args


def _render(args: list[str], values: dict[str, str]) -> list[str]:
    return [arg.format_map(values) for arg in args]


@dataclass(frozen=True)
class EfuseKey:
    """What one burn needs: the key scalar, its block (from SEC_CFG) and the chip."""

    key: bytes  # 32-byte P-256 private scalar, big-endian
    block: int  # eFuse block number (BLOCK_KEY0 is 4)
    chip: str

    @property
    def block_name(self) -> str:
        """espefuse's name of the block, e.g. BLOCK_KEY1 for block 5."""
        return f"BLOCK_KEY{self.block - secure_cert.EFUSE_BLOCK_KEY0}"


def efuse_key(key: bytes, secure_cert_image: bytes, chip: str | None) -> EfuseKey:
    """The burn of a device: its key, the block its esp_secure_cert names, and the chip."""
    if len(key) != 32:
        raise invalid("efuse_key", "must be the 32-byte DAC private scalar")
    block = secure_cert.read_secure_cert(secure_cert_image).efuse_block
    if block is None:
        raise invalid("secure_cert", "has no SEC_CFG entry naming an eFuse block")
    if not chip:
        raise invalid("efuse_chip", "the image names no chip for the eFuse burn")
    return EfuseKey(key, block, chip)


def _pem(key: bytes) -> bytes:
    private = ec.derive_private_key(int.from_bytes(key, "big"), ec.SECP256R1())
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def burn(template: str, burn_key: EfuseKey, port: str | None, timeout: float) -> str:
    """Run the eFuse command for `burn_key`; its output, or BurnFailed(reason)."""
    folder = Path(tempfile.mkdtemp(prefix="matterfab-efuse-"))  # mode 0700
    try:
        raw, pem = folder / "efuse_key.bin", folder / "efuse_key.pem"
        for path, data in ((raw, burn_key.key), (pem, _pem(burn_key.key))):
            path.touch(mode=0o600)
            path.write_bytes(data)
        if port is None and "{port}" in template:
            raise BurnFailed("placeholder {port} has no value: give the station --port")
        values = {
            "efuse_key": str(raw),
            "efuse_key_pem": str(pem),
            "efuse_block": burn_key.block_name,
            "chip": burn_key.chip,
            "port": port or "",
        }
        try:
            argv = _render(check_template(template), values)
        except InvalidInput as exc:
            raise BurnFailed(str(exc)) from exc
        try:
            return await commands.run("eFuse command", argv, timeout)
        except commands.CommandFailed as exc:
            raise BurnFailed(str(exc)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["PLACEHOLDERS", "BurnFailed", "EfuseKey", "burn", "check_template", "efuse_key"]
