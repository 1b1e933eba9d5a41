"""DACs over device-born keys (dac_storage device-key) against two independent validators.

The device's key pair is made by the device simulator (a separate process, where the chip
stands); the DAC is issued from its CSR alone. OpenSSL (`openssl req -verify`, `openssl verify
-x509_strict`) and the Matter SDK's own checks (`VerifyAttestationCertificateFormat`,
`ValidateCertificateChain`, through tests/chip_sdk.py) must accept the result, and reject a DAC
under another PAA, a forged CSR being refused before anything is issued.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from matterfab.errors import InvalidInput
from matterfab.matter import attestation, csr, pki
from tests.chip_sdk import chip_certificate_format_error, chip_chain_error

VID, PID = 0xFFF1, 0x8000


def device_csr(state: Path, device: str, *extra: str) -> str:
    argv = [sys.executable, "-m", "matterfab.devsim", "csr", "--state", str(state)]
    out = subprocess.run(
        [*argv, "--device", device, *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return csr.extract_csr_pem(out.stdout)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def test_a_device_key_dac_passes_openssl_and_the_matter_sdk(tmp_path: Path) -> None:
    paa, paa_key = pki.make_paa(vendor_id=VID)
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID)
    request = device_csr(tmp_path, "DK/0000000")
    verdict = subprocess.run(
        ["openssl", "req", "-verify", "-noout"], input=request, capture_output=True, text=True
    )
    assert "verify OK" in verdict.stdout + verdict.stderr
    checked = csr.check_csr(request)
    dac = csr.issue_dac_for_key(
        public_key=checked.public_key,
        pai_cert=pai,
        signer=attestation.InMemorySigner(pai_key),
        vendor_id=VID,
        product_id=PID,
        not_before=datetime.now(UTC),
        not_after=None,
    )
    assert csr.dac_over_key(der(dac), checked.public_key_raw)
    (tmp_path / "paa.pem").write_bytes(pem(paa))
    (tmp_path / "pai.pem").write_bytes(pem(pai))
    (tmp_path / "dac.pem").write_bytes(pem(dac))
    ok = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "paa.pem"),
         "-untrusted", str(tmp_path / "pai.pem"), str(tmp_path / "dac.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    assert chip_certificate_format_error(der(dac), "dac") == 0
    assert chip_certificate_format_error(der(pai), "pai") == 0
    assert chip_chain_error(der(paa), der(pai), der(dac)) == (0, 0)
    # The validators do reject: the DAC is no PAI, and another PAA is not its root.
    assert chip_certificate_format_error(der(dac), "pai") != 0
    other_paa, _ = pki.make_paa(vendor_id=VID)
    assert chip_chain_error(der(other_paa), der(pai), der(dac)) != (0, 0)


def test_a_forged_csr_is_refused_before_anything_is_issued(tmp_path: Path) -> None:
    forged = device_csr(tmp_path, "DK/0000001", "--fault", "forge")
    verdict = subprocess.run(
        ["openssl", "req", "-verify", "-noout"], input=forged, capture_output=True, text=True
    )
    assert "verify failure" in verdict.stdout + verdict.stderr
    with pytest.raises(InvalidInput, match="self-signature does not verify"):
        csr.check_csr(forged)
