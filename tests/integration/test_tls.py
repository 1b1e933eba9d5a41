"""S3 over HTTPS for real: the local SeaweedFS serving TLS with a throwaway CA made here.

`weed mini -s3.cert.file/-s3.key.file` serves the S3 API over HTTPS; matterfab trusts it
through MATTERFAB_S3_CA_BUNDLE on both client paths (obstore for objects, aioboto3 for the
bucket). A wrong CA, or none, is refused at once in one line naming the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from matterfab.config import S3Settings
from matterfab.errors import Refused
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack, S3Tls, StackPorts
from tests.tls_certs import TestCA

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    """The CA that signs the store's certificate, and an unrelated one."""
    folder = tmp_path_factory.mktemp("tls")
    return TestCA(folder, "store CA"), TestCA(folder, "wrong CA")


@pytest.fixture(scope="module")
def https_stack(
    tmp_path_factory: pytest.TempPathFactory, cas: tuple[TestCA, TestCA]
) -> Iterator[LocalStack]:
    """A local stack whose S3 store speaks only HTTPS (certificate for 127.0.0.1)."""
    right, _ = cas
    server = right.issue("s3-server", ["127.0.0.1", "localhost"])
    local = LocalStack(
        tmp_path_factory.mktemp("https-stack"),
        ports=StackPorts.free(),
        s3_tls=S3Tls(cert=server.cert, key=server.key, ca=right.pem),
    )
    local.start()  # creates the bucket over HTTPS (aioboto3, verify=CA)
    try:
        yield local
    finally:
        local.stop()


def with_ca(settings: S3Settings, ca: Path | None) -> S3Settings:
    return settings.model_copy(update={"ca_bundle": ca, "retry_deadline_s": 3.0})


async def test_objects_and_bucket_over_https(https_stack: LocalStack) -> None:
    settings = https_stack.s3_settings()
    assert settings.endpoint.startswith("https://127.0.0.1:")
    async with ObjectStore.open(settings) as store:
        await store.check()
        await store.ensure_bucket()  # aioboto3 path, trusting the CA
        stored = await store.put_once("tls/one.bin", b"over https")
        assert stored.created
        assert await store.get("tls/one.bin") == b"over https"
        assert await store.list_keys("tls/") == ["tls/one.bin"]


@pytest.mark.parametrize("ca", ["wrong", "none"])
async def test_untrusted_certificate_is_refused_in_one_line(
    https_stack: LocalStack, cas: tuple[TestCA, TestCA], ca: str
) -> None:
    _, wrong = cas
    settings = with_ca(https_stack.s3_settings(), wrong.pem if ca == "wrong" else None)
    async with ObjectStore.open(settings) as store:
        for attempt in (store.check(), store.get_or_none("tls/one.bin"), store.ensure_bucket()):
            with pytest.raises(Refused) as refused:
                await attempt
            message = str(refused.value)
            assert "\n" not in message
            assert "TLS certificate not trusted" in message
            assert "MATTERFAB_S3_CA_BUNDLE" in message
            assert settings.endpoint in message
            assert settings.secret_key.get_secret_value() not in message


def test_cli_over_https_right_and_wrong_ca(
    https_stack: LocalStack, cas: tuple[TestCA, TestCA], tmp_path: Path
) -> None:
    right, wrong = cas
    s3 = https_stack.s3_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERFAB_")}
    env.update(
        MATTERFAB_HOME=str(tmp_path / "home"),
        MATTERFAB_S3_ENDPOINT=s3.endpoint,
        MATTERFAB_S3_ACCESS_KEY=s3.access_key,
        MATTERFAB_S3_SECRET_KEY=s3.secret_key.get_secret_value(),
        MATTERFAB_S3_BUCKET=s3.bucket,
        PYTHONPATH=str(ROOT),
    )

    def fetch(ca: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "matterfab.cli.main", "order", "fetch", "TLS-NONE",
             "--out", str(tmp_path / "out")],
            env=dict(env, MATTERFAB_S3_CA_BUNDLE=str(ca)),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip

    trusted = fetch(right.pem)
    assert trusted.returncode == 1
    assert trusted.stderr.strip() == "error: order TLS-NONE has no manifest yet (not completed)"
    refused = fetch(wrong.pem)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: S3 store at {s3.endpoint} (bucket {s3.bucket}): TLS")
    assert "MATTERFAB_S3_CA_BUNDLE" in line
    assert "Traceback" not in refused.stderr + refused.stdout
