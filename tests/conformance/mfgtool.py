"""Run Espressif's esp-matter-mfg-tool (the independent implementation) from tests and bench.

The tool lives in its own venv, `<repo>/.venv-mfgtool` (Makefile target `mfgtool-venv`), because
it pins dependencies (cryptography 44, esp-idf-nvs-partition-gen 0.1.9, click 8.1.7) that
differ from ours. Set MATTERFAB_MFGTOOL to use another executable.

Also makes a throwaway PAA → PAI → DAC chain with `cryptography` that passes the tool's own
certificate checks (sources/cert_utils.py validate_pai_cert / validate_dac_cert / chain).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
VID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.1")
PID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.2")


class MfgToolMissing(RuntimeError):
    """The tool's venv is not installed."""


def mfgtool_path() -> Path:
    """The esp-matter-mfg-tool executable, or MfgToolMissing saying how to install it."""
    path = Path(
        os.environ.get("MATTERFAB_MFGTOOL", REPO / ".venv-mfgtool" / "bin" / "esp-matter-mfg-tool")
    )
    if not os.access(path, os.X_OK):
        raise MfgToolMissing(
            f"esp-matter-mfg-tool not found at {path}: run `make mfgtool-venv` (creates "
            f"{REPO / '.venv-mfgtool'} with esp-matter-mfg-tool==1.0.29) or set MATTERFAB_MFGTOOL"
        )
    return path


def vectors_dir() -> Path:
    """The shared test vectors: $MATTERFAB_VECTORS_DIR, else <repo>/../shared/vectors."""
    return Path(os.environ.get("MATTERFAB_VECTORS_DIR", REPO.parent / "shared" / "vectors"))


@dataclass(frozen=True)
class TestPki:
    """A PAA/PAI/DAC chain written as PEM files, plus the DER and raw key forms NVS stores."""

    pai_pem: Path
    pai_key_pem: Path
    dac_pem: Path
    dac_key_pem: Path
    pai_der: bytes
    dac_der: bytes
    dac_key_raw: bytes  # 32-byte private scalar
    dac_pub_raw: bytes  # 65-byte uncompressed point
    dac_uuid: str  # DAC subject CN: the tool names its output folder after it


def _name(cn: str, vid: int, pid: int | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(VID_OID, f"{vid:04X}"),
    ]
    if pid is not None:
        attrs.append(x509.NameAttribute(PID_OID, f"{pid:04X}"))
    return x509.Name(attrs)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None,
    days: int,
    start: datetime.datetime,
) -> x509.Certificate:
    usage_ca = dict(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **usage_ca,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def make_test_pki(folder: Path, vid: int, pid: int) -> TestPki:
    """Write a fresh PAA → PAI(VID) → DAC(VID, PID) chain under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    paa_key, pai_key, dac_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    paa_name = _name("matterfab test PAA", vid)
    pai_name = _name("matterfab test PAI", vid)
    dac_uuid = str(uuid.uuid4())
    dac_name = _name(dac_uuid, vid, pid)
    start = now - datetime.timedelta(days=1)
    pai = _cert(
        pai_name, pai_key, paa_name, paa_key, ca=True, path_length=0, days=3650, start=start
    )
    dac = _cert(
        dac_name, dac_key, pai_name, pai_key, ca=False, path_length=None, days=365, start=now
    )

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    pem_key = {
        "encoding": serialization.Encoding.PEM,
        "format": serialization.PrivateFormat.PKCS8,
        "encryption_algorithm": serialization.NoEncryption(),
    }
    return TestPki(
        pai_pem=write("pai.pem", pai.public_bytes(serialization.Encoding.PEM)),
        pai_key_pem=write("pai_key.pem", pai_key.private_bytes(**pem_key)),  # type: ignore[arg-type]
        dac_pem=write("dac.pem", dac.public_bytes(serialization.Encoding.PEM)),
        dac_key_pem=write("dac_key.pem", dac_key.private_bytes(**pem_key)),  # type: ignore[arg-type]
        pai_der=pai.public_bytes(serialization.Encoding.DER),
        dac_der=dac.public_bytes(serialization.Encoding.DER),
        dac_key_raw=dac_key.private_numbers().private_value.to_bytes(32, "big"),
        dac_pub_raw=dac_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ),
        dac_uuid=dac_uuid,
    )


def run_mfgtool(args: list[str], cwd: Path, timeout: float = 600) -> Path:
    """Run the tool with `args` in `cwd` (output in cwd/out); return the out/<vid>_<pid> folder."""
    tool = mfgtool_path()
    result = subprocess.run(
        [str(tool), "--outdir", str(cwd / "out"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"esp-matter-mfg-tool failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    folders = [p for p in (cwd / "out").iterdir() if p.is_dir()]
    if len(folders) != 1:
        raise AssertionError(f"expected one out/<vid>_<pid> folder, found {folders}")
    return folders[0]


def device_outputs(vid_pid_dir: Path) -> list[Path]:
    """The per-device folders (named by UUID) the tool wrote under out/<vid>_<pid>."""
    skip = {"staging", "bin", "csv", "keys"}
    return sorted(p for p in vid_pid_dir.iterdir() if p.is_dir() and p.name not in skip)


def secure_cert_bin(device: Path) -> Path:
    """The esp_secure_cert partition the tool wrote for a device (`--dac-in-secure-cert`)."""
    return device / f"{device.name}_esp_secure_cert.bin"


def tool_python() -> Path:
    """The Python of the tool's venv, which also holds esp-secure-cert-tool's package."""
    return mfgtool_path().parent / "python"


def parse_with_esp_secure_cert_tool(image: Path) -> list[dict[str, object]]:
    """Run esp-secure-cert-tool's own TLV parser (esp_secure_cert.tlv_parser) on `image`.

    Its `process_tlv_entries` prints each entry; this reads that report back: per entry the
    type, subtype, flags, length, whether its CRC is valid and the data (hex) it printed.
    """
    result = subprocess.run(
        [str(tool_python()), "-c", _PARSE, str(image)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"tlv_parser failed:\n{result.stdout}\n{result.stderr}")
    entries: list[dict[str, object]] = []
    for line in result.stdout.splitlines():
        text = line.strip()
        if text.startswith("TLV Entry #"):
            entries.append({})
        elif entries and ":" in text:
            name, _, value = text.partition(":")
            name, value = name.strip(), value.strip()
            if name == "Type":
                entries[-1]["type"] = int(value.split()[0])
            elif name == "Subtype":
                entries[-1]["subtype"] = int(value)
            elif name == "Flags":
                entries[-1]["flags"] = int(value, 16)
            elif name == "Length":
                entries[-1]["length"] = int(value.split()[0])
            elif name == "CRC32":
                entries[-1]["crc_valid"] = "✓ VALID" in value
            elif name in ("Binary certificate data", "Binary key data"):
                entries[-1]["data"] = bytes.fromhex(value)
    return entries


_PARSE = """
import sys
from esp_secure_cert.tlv_parser import process_tlv_entries
process_tlv_entries(sys.argv[1])
"""


def time_batch(count: int, cwd: Path, iteration_count: int = 10000) -> float:
    """Seconds per device for `esp-matter-mfg-tool -n count` (tool makes DACs from our PAI)."""
    pki = make_test_pki(cwd / "pki", 0xFFF1, 0x8000)
    args = [
        "-n", str(count), "--iteration-count", str(iteration_count),
        "--pai", "-c", str(pki.pai_pem), "-k", str(pki.pai_key_pem), "-lt", "365",
        "-v", "0xFFF1", "-p", "0x8000", "--vendor-name", "Acme Lighting",
        "--product-name", "A19 Bulb", "--hw-ver", "2", "--hw-ver-str", "v2.1",
        "--mfg-date", "2026-11-21", "--enable-rotating-device-id", "--part-number", "A19-MTR-2",
        "--product-label", "Acme A19 Smart Bulb", "--product-url", "https://acme.example/a19",
        "--product-finish", "matte", "--product-color", "white", "-s", "0x6000",
    ]  # fmt: skip
    cd = vectors_dir() / "Chip-Test-CD-FFF1-8000-8063.der"
    if cd.exists():
        args += ["-cd", str(cd)]
    started = time.perf_counter()
    run_mfgtool(args, cwd)
    return (time.perf_counter() - started) / count


if __name__ == "__main__":  # python tests/conformance/mfgtool.py [count]
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        per_device = time_batch(n, Path(tmp))
    print(f"esp-matter-mfg-tool -n {n}: {per_device * 1000:.1f} ms per device")
