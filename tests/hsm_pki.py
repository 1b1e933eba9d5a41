"""A maker's production PKI as tests build it: a SoftHSM2 token, and a PAA run with OpenSSL.

The PAA is an external operator's: its key and certificate are made, and CSRs signed, by the
OpenSSL command line, never by matterfab's code. The token is a fresh SoftHSM2 token under a
SOFTHSM2_CONF of the test's own; commands that use it run as their own processes (the module
reads SOFTHSM2_CONF once per process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "24681357"
# keyUsage and basicConstraints of a Matter PAI (§6.2.2.4), as a PAA operator's OpenSSL config.
PAI_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE,pathlen:0\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)


@dataclass
class Token:
    """A SoftHSM2 token: label, PIN, and the environment that reaches it."""

    label: str
    pin: str
    pin_env: str
    env: dict[str, str]

    def key_attributes(self, key_label: str) -> dict[str, bool]:
        """CKA_* booleans of the private key `key_label`, read through PKCS#11."""
        code = (
            "import json, pkcs11\n"
            f"tok = pkcs11.lib({MODULE!r}).get_token(token_label={self.label!r})\n"
            f"with tok.open(user_pin={self.pin!r}) as s:\n"
            f"    k = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label={key_label!r})\n"
            "    A = pkcs11.Attribute\n"
            "    names = ['EXTRACTABLE', 'SENSITIVE', 'NEVER_EXTRACTABLE', 'ALWAYS_SENSITIVE',\n"
            "             'TOKEN', 'PRIVATE', 'LOCAL']\n"
            "    print(json.dumps({n: bool(k[getattr(A, n)]) for n in names}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, check=True
        )
        import json

        return dict(json.loads(done.stdout))


def make_token(base: Path, label: str, pin: str, pin_env: str) -> Token:
    """A fresh SoftHSM2 token in `base`; fails (not skips) when SoftHSM2 is missing."""
    if not Path(MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(f"SoftHSM2 is not installed ({MODULE}): run `make apt`")
    (base / "tokens").mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), pin_env: pin}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--pin", pin, "--so-pin", SO_PIN],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    return Token(label, pin, pin_env, env)


def openssl(*args: str) -> str:
    """Run the OpenSSL command line; its stdout (raises with stderr on failure)."""
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class Paa:
    """A PAA run with OpenSSL: its certificate and key files."""

    cert: Path
    key: Path

    def sign(
        self, csr: Path, out: Path, *, days: int = 3650, extensions: str = PAI_EXTENSIONS
    ) -> Path:
        """Issue a PAI for `csr` as `openssl x509 -req` does for a PAA operator."""
        ext = out.with_suffix(".ext")
        ext.write_text(extensions)
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", str(ext),
            "-out", str(out),
        )  # fmt: skip
        return out


def make_paa(folder: Path, common_name: str = "OpenSSL Test PAA") -> Paa:
    """A self-signed P-256 PAA (pathlen 1, keyCertSign+cRLSign), made by OpenSSL."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "paa.key", folder / "paa.pem"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", "7300",
        "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:1",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-addext", "authorityKeyIdentifier=keyid:always",
        "-out", str(cert),
    )  # fmt: skip
    return Paa(cert, key)


def matterfab_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `matterfab` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "matterfab.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
