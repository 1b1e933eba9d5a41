"""PAI key in an HSM: SoftHSM2 through PKCS#11; the key is generated in the token, never a file.

Needs Debian `softhsm2` (the Makefile's `apt` target installs it). Without it these tests fail
with a message saying so: a run that skipped them would have checked nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matterfab import keysource, profiles
from matterfab.errors import InvalidInput
from matterfab.matter import attestation, cd, pki

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN, SO_PIN = "20212223", "87654321"
VID, PID = 0xFFF1, 0x8000


@dataclass
class Token:
    label: str
    conf: Path
    tokendir: Path


def _require_softhsm() -> None:
    if not Path(MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(
            f"SoftHSM2 is not installed ({MODULE} / softhsm2-util missing): "
            "run `make apt` or `apt-get install softhsm2`"
        )


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    _require_softhsm()
    base = tmp_path_factory.mktemp("softhsm")
    tokendir = base / "tokens"
    tokendir.mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    # SoftHSM reads SOFTHSM2_CONF when the module initialises: set it before anything loads it.
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    label = "matterfab-test"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip
    yield Token(label, conf, tokendir)
    # Finalise the module so a later test with a SOFTHSM2_CONF of its own starts afresh.
    import pkcs11

    pkcs11.unload(MODULE)
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="module")
def hsm_chain(token: Token) -> tuple[x509.Certificate, x509.Certificate]:
    public = keysource.generate_pkcs11_key(MODULE, token.label, PIN, "pai-fff1")
    paa, paa_key = pki.make_paa(vendor_id=VID)
    pai = pki.issue_pai(paa, paa_key, public, VID)
    return paa, pai


def _issue(signer: attestation.PaiSigner, pai: x509.Certificate) -> attestation.IssuedDac:
    return attestation.issue_dac(
        pai_cert=pai,
        signer=signer,
        vendor_id=VID,
        product_id=PID,
        not_before=datetime.now(UTC),
        not_after=None,
    )


def test_dacs_signed_in_the_token_verify(hsm_chain: tuple, token: Token, tmp_path: Path) -> None:
    paa, pai = hsm_chain
    signer = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    try:
        assert signer.public_key() == pai.public_key()
        dacs = [_issue(signer, pai) for _ in range(20)]
    finally:
        signer.close()
    for dac in dacs:
        attestation.verify_chain(dac.certificate, pai, paa)
    (tmp_path / "paa.pem").write_bytes(paa.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "pai.pem").write_bytes(pai.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "dac.pem").write_bytes(dacs[0].certificate.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "paa.pem"),
         "-untrusted", str(tmp_path / "pai.pem"), str(tmp_path / "dac.pem")],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_key_never_leaves_the_token(hsm_chain: tuple, token: Token) -> None:
    import pkcs11

    signer = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    try:
        login = keysource._LOGINS[(MODULE, token.label)]
        with login.lock:
            key = login.session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="pai-fff1"
            )
            assert key[pkcs11.Attribute.SENSITIVE] is True
            assert key[pkcs11.Attribute.EXTRACTABLE] is False
            assert key[pkcs11.Attribute.TOKEN] is True
            with pytest.raises(pkcs11.PKCS11Error):
                key[pkcs11.Attribute.VALUE]
    finally:
        signer.close()
    # No PEM/DER private key anywhere: the token folder holds SoftHSM's object files only.
    for path in token.tokendir.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes()


def test_signers_share_the_login_and_threads(hsm_chain: tuple, token: Token) -> None:
    paa, pai = hsm_chain
    first = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    second = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    first.close()  # must not log the second one out
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                attestation.verify_chain(_issue(second, pai).certificate, pai, paa)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    second.close()
    assert errors == []


def test_profile_with_a_pkcs11_key_source(
    hsm_chain: tuple, token: Token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paa, pai = hsm_chain
    cd_cert, cd_key = pki.make_cd_signing()
    content = cd.CdContent(
        vendor_id=VID,
        product_id_array=[PID],
        device_type_id=0x16,
        certificate_id="ZIG20142ZB330003-24",
        version_number=1,
    )
    spec = {
        "type": "pkcs11",
        "module": MODULE,
        "token_label": token.label,
        "key_label": "pai-fff1",
        "pin_env": "MATTERFAB_TEST_HSM_PIN",
    }
    profile = profiles.create_profile(
        "hsm",
        vendor_id=VID,
        product_id=PID,
        pai_cert=pai,
        paa_cert=paa,
        cd_der=cd.sign_cd(content, cd_cert, cd_key),
        cd_signing_cert=cd_cert,
        key_spec=spec,
        profiles_dir=tmp_path,
    )
    assert not (tmp_path / "hsm" / "pai-key.pem").exists()
    assert PIN not in (tmp_path / "hsm" / "profile.json").read_text()
    monkeypatch.setenv("MATTERFAB_TEST_HSM_PIN", PIN)
    signer = profiles.load_profile("hsm", tmp_path).signer()
    try:
        assert isinstance(signer, keysource.Pkcs11PaiSigner)
        attestation.verify_chain(_issue(signer, pai).certificate, pai, profile.paa_cert)
    finally:
        signer.close()


def test_typed_errors(hsm_chain: tuple, token: Token) -> None:
    with pytest.raises(InvalidInput) as info:
        keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "no-such-key")
    assert info.value.field == "key_source.key_label"
    with pytest.raises(InvalidInput) as info:
        keysource.Pkcs11PaiSigner(MODULE, "no-such-token", PIN, "pai-fff1")
    assert info.value.field == "key_source.token_label"
    with pytest.raises(InvalidInput) as info:
        keysource.Pkcs11PaiSigner(MODULE, token.label, "wrong-pin", "pai-fff1")
    assert info.value.field == "key_source.pin"
    with pytest.raises(InvalidInput, match="already holds"):
        keysource.generate_pkcs11_key(MODULE, token.label, PIN, "pai-fff1")
    # Every failed open released its login: a fresh signer still works.
    signer = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    signer.close()
    assert keysource._LOGINS == {}


async def test_device_key_dacs_are_signed_together_in_the_token(
    hsm_chain: tuple, token: Token
) -> None:
    """dac_storage device-key with an HSM: CSRs that arrive together are one thread hand-off,
    every DAC over its device's own key and chained to the PAA."""
    import asyncio

    from cryptography.hazmat.primitives.asymmetric import ec

    from matterfab.matter import csr
    from matterfab.services.signer.dac_requests import BatchSigner

    paa, pai = hsm_chain
    signer = keysource.Pkcs11PaiSigner(MODULE, token.label, PIN, "pai-fff1")
    devices = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    batch = BatchSigner()
    try:
        jobs = [
            {
                "public_key": key.public_key(),
                "pai": pai,
                "signer": signer,
                "vendor_id": VID,
                "product_id": PID,
                "not_after": None,
            }
            for key in devices
        ]
        dacs = await asyncio.gather(*(batch.sign(job) for job in jobs))
    finally:
        signer.close()
    assert batch.batches == [5]
    for key, dac in zip(devices, dacs, strict=True):
        attestation.verify_chain(dac, pai, paa)
        der = dac.public_bytes(serialization.Encoding.DER)
        assert csr.dac_over_key(der, csr.public_key_raw(key.public_key()))
