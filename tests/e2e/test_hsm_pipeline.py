"""The whole pipeline with the PAI key in an HSM (SoftHSM2 through PKCS#11).

The PAI key is generated inside a token (sensitive, non-extractable); the profile stores only
a PKCS#11 key spec, the PIN comes from the signer's environment. A 60-device order completes
and every DAC verifies against the PAI and PAA; no file of the profile holds a private key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matterfab import catalogue, profiles
from matterfab.config import KafkaSettings
from matterfab.matter import attestation, cd, pki
from matterfab.messages import ORDER_EVENTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import device_objects, work_order
from tests.reliability.harness import (
    OwnPipeline,
    check_order,
    end_offsets,
    exclusive_pipeline,
    submit,
    wait_final,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN, SO_PIN = "31415926", "27182818"
PIN_ENV = "MATTERFAB_E2E_HSM_PIN"
TOKEN = "matterfab-e2e"
NAME = "hsm-fff1"
VID, PID = 0xFFF1, 0x8000
ORDER = "E2E-HSM"
QUANTITY = 60
INSTANCE = 76


@pytest.fixture(scope="module")
def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SoftHSM2 config with a fresh token, and a P-256 PAI key generated inside it."""
    if not Path(MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(f"SoftHSM2 is not installed ({MODULE}): run `make apt`")
    base = tmp_path_factory.mktemp("e2e-softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
         "--pin", PIN, "--so-pin", SO_PIN],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    return conf


def generate_key_in_token(conf: Path) -> x509.Certificate:
    """Generate the PAI key in the token (own process: the module reads SOFTHSM2_CONF once)."""
    code = (
        "import sys\n"
        "from cryptography.hazmat.primitives import serialization as s\n"
        "from matterfab import keysource\n"
        f"pub = keysource.generate_pkcs11_key({MODULE!r}, {TOKEN!r}, {PIN!r}, 'pai')\n"
        "sys.stdout.write(pub.public_bytes(s.Encoding.PEM, "
        "s.PublicFormat.SubjectPublicKeyInfo).decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return serialization.load_pem_public_key(done.stdout.encode())  # type: ignore[return-value]


@pytest.fixture(scope="module")
def hsm_profile(stack: LocalStack, softhsm_conf: Path) -> profiles.AttestationProfile:
    """Profile `hsm-fff1` in the stack's profiles folder: PAI key in the token."""
    public = generate_key_in_token(softhsm_conf)
    paa, paa_key = pki.make_paa("matterfab E2E HSM PAA", VID)
    pai = pki.issue_pai(paa, paa_key, public, VID, common_name="matterfab E2E HSM PAI")
    cd_cert, cd_key = pki.make_cd_signing()
    content = cd.CdContent(
        vendor_id=VID,
        product_id_array=[PID],
        device_type_id=0x16,
        certificate_id="ZIG20142ZB330003-24",
        version_number=1,
    )
    return profiles.create_profile(
        NAME,
        vendor_id=VID,
        product_id=PID,
        pai_cert=pai,
        paa_cert=paa,
        cd_der=cd.sign_cd(content, cd_cert, cd_key),
        cd_signing_cert=cd_cert,
        key_spec={
            "type": "pkcs11",
            "module": MODULE,
            "token_label": TOKEN,
            "key_label": "pai",
            "pin_env": PIN_ENV,
        },
        profiles_dir=stack.home / "profiles",
    )


@pytest.fixture(scope="module")
def hsm_pipeline(
    stack: LocalStack, softhsm_conf: Path, hsm_profile: profiles.AttestationProfile
) -> Iterator[OwnPipeline]:
    """Our pipeline alone; only its signer knows the token (config and PIN)."""
    signer_env = {"SOFTHSM2_CONF": str(softhsm_conf), PIN_ENV: PIN}
    with exclusive_pipeline(stack, INSTANCE, per_service_env={"signer": signer_env}) as own:
        yield own


async def test_order_signed_in_the_hsm_completes_and_every_dac_verifies(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    hsm_profile: profiles.AttestationProfile,
    hsm_pipeline: OwnPipeline,
) -> None:
    await catalogue.publish(store, hsm_profile.public_summary())  # the signer also does
    since = await end_offsets(kafka_settings, ORDER_EVENTS)
    await submit(kafka_settings, work_order(ORDER, QUANTITY, NAME), ORDER)
    final = await wait_final(kafka_settings, ORDER, since, timeout=300)
    assert final.status == "completed", (final, hsm_pipeline.log(f"signer-{INSTANCE}")[-3000:])
    # Every invariant, `matterfab verify` included (chains each DAC to the catalogue's PAA).
    result = await check_order(stack, store, kafka_settings, ORDER, QUANTITY)
    assert result.lost == 0 and result.duplicates == 0
    dacs = await device_objects(store, ORDER, "dac")  # cut out of dacs.lot, sha256-checked
    assert sorted(dacs) == [f"{i:07d}" for i in range(QUANTITY)]
    for der in dacs.values():
        dac = x509.load_der_x509_certificate(der)
        attestation.verify_chain(dac, hsm_profile.pai_cert, hsm_profile.paa_cert)


def test_no_file_of_the_profile_holds_a_private_key(
    stack: LocalStack, hsm_profile: profiles.AttestationProfile, hsm_pipeline: OwnPipeline
) -> None:
    folder = stack.home / "profiles" / NAME
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"profile.json", "pai.pem", "paa.pem", "cd.der"}
    assert not (folder / "pai-key.pem").exists()
    for path in files:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert PIN.encode() not in data, path
        for loader in (serialization.load_der_private_key, serialization.load_pem_private_key):
            with pytest.raises((ValueError, TypeError)):
                loader(data, password=None)
    meta: dict[str, Any] = profiles.load_profile(NAME, stack.home / "profiles").key_spec
    assert meta["type"] == "pkcs11" and "pin" not in meta
    assert f"signer-{INSTANCE}" in stack.running_services()
