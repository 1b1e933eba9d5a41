"""Going to production, end to end on the local stack, as a maker would from the command line.

`pki csr` generates the PAI key inside a SoftHSM2 token; a PAA operator (OpenSSL's command
line, not our code) issues the PAI; `pki add` registers it with the CSA's CD and publishes it
to the catalogue; an order runs through the real pipeline, whose signer signs in the token;
OpenSSL verifies every DAC against the PAI and the PAA.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import vectors_path
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from matterfab import catalogue, profiles
from matterfab.config import KafkaSettings
from matterfab.messages import ORDER_EVENTS
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.hsm_pki import MODULE, Paa, Token, make_paa, make_token, matterfab_cli
from tests.pipeline import cli_env, device_objects, work_order
from tests.reliability.harness import (
    OwnPipeline,
    check_order,
    end_offsets,
    exclusive_pipeline,
    submit,
    wait_final,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN, PIN, PIN_ENV = "matterfab-e2e-prod", "11235813", "MATTERFAB_E2E_PROD_PIN"
NAME = "acme-fff1-prod"
ORDER = "E2E-PROD-HSM"
QUANTITY = 12
INSTANCE = 78


@dataclass
class Production:
    """The maker's side: token, the PAA that issued the PAI, the PAI file."""

    token: Token
    paa: Paa
    pai: Path


@pytest.fixture(scope="module")
def production(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Production:
    base = tmp_path_factory.mktemp("e2e-prod")
    token = make_token(base / "hsm", TOKEN, PIN, PIN_ENV)
    env = cli_env(stack, **{k: token.env[k] for k in ("SOFTHSM2_CONF", PIN_ENV)})
    hsm = ["--pkcs11-module", MODULE, "--token-label", TOKEN, "--key-label", "pai",
           "--pin-env", PIN_ENV]  # fmt: skip
    csr = base / "pai.csr"
    made = matterfab_cli("pki", "csr", "--vid", "0xFFF1", "--out", str(csr), *hsm, env=env)
    assert made.returncode == 0, made.stderr
    paa = make_paa(base / "paa", "matterfab E2E OpenSSL PAA")
    pai = paa.sign(csr, base / "pai.pem")
    vectors = vectors_path.vectors_dir()
    added = matterfab_cli(
        "pki", "add", NAME, "--pai-cert", str(pai), "--paa-cert", str(paa.cert),
        "--cd", str(vectors / "Chip-Test-CD-FFF1-8000-8063.der"),
        "--cd-signing-cert", str(vectors / "Chip-Test-CD-Signing-Cert.pem"),
        "--pid", "0x8000", *hsm, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "could not publish" not in added.stderr and "no object store" not in added.stderr
    return Production(token, paa, pai)


@pytest.fixture(scope="module")
def own_pipeline(stack: LocalStack, production: Production) -> Iterator[OwnPipeline]:
    """Our pipeline alone; only its signer knows the token and the PIN."""
    signer_env = {"SOFTHSM2_CONF": production.token.env["SOFTHSM2_CONF"], PIN_ENV: PIN}
    with exclusive_pipeline(stack, INSTANCE, per_service_env={"signer": signer_env}) as own:
        yield own


async def test_production_profile_order_completes_and_openssl_verifies_every_dac(
    stack: LocalStack,
    store: ObjectStore,
    kafka_settings: KafkaSettings,
    production: Production,
    own_pipeline: OwnPipeline,
    tmp_path: Path,
) -> None:
    summary = json.loads(await store.get(catalogue.key_for(NAME)))  # published by `pki add`
    assert summary["kind"] == "production" and summary["issues_dacs"] is True
    assert summary["key_source_type"] == "pkcs11" and PIN not in json.dumps(summary)

    since = await end_offsets(kafka_settings, ORDER_EVENTS)
    await submit(kafka_settings, work_order(ORDER, QUANTITY, NAME), ORDER)
    final = await wait_final(kafka_settings, ORDER, since, timeout=300)
    assert final.status == "completed", (final, own_pipeline.log(f"signer-{INSTANCE}")[-3000:])
    result = await check_order(stack, store, kafka_settings, ORDER, QUANTITY)
    assert result.lost == 0 and result.duplicates == 0

    pems = []
    dacs = await device_objects(store, ORDER, "dac")  # cut out of dacs.lot, sha256-checked
    assert sorted(dacs) == [f"{i:07d}" for i in range(QUANTITY)]
    for index, der in dacs.items():
        pem = tmp_path / f"dac-{index}.pem"
        pem.write_bytes(
            x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        )
        pems.append(str(pem))
    done = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(production.paa.cert),
         "-untrusted", str(production.pai), *pems],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{p}: OK" for p in pems]

    profile = profiles.load_profile(NAME, stack.home / "profiles")
    assert profile.kind == "production" and profile.key_spec is not None
    assert profile.key_spec["type"] == "pkcs11" and "pin" not in profile.key_spec
    attrs = production.token.key_attributes("pai")
    assert attrs["EXTRACTABLE"] is False and attrs["SENSITIVE"] is True
