"""Kafka security settings at the boundary: the exact aiokafka arguments, and a TLS context that
trusts only the configured CA, checked against a local TLS socket server.

The embedded broker has neither TLS nor SASL, so these tests stop where aiokafka takes over:
the arguments it is given, and real TLS handshakes (right CA, wrong CA, mutual TLS, hostname
check) against a socket server here, including one aiokafka itself opens with our arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from matterfab import config, kafka
from matterfab.config import KafkaSettings
from matterfab.errors import Refused, StackError
from tests.tls_certs import Issued, TestCA

PASSWORD = "kafka-sasl-password-0123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MATTERFAB_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("kafka-tls")
    right, wrong = TestCA(folder, "broker CA"), TestCA(folder, "other CA")
    return {
        "ca": right,
        "wrong": wrong,
        "server": right.issue("broker", ["127.0.0.1", "broker.local"]),
        "client": right.issue("client", ["matterfab-client"], client=True),
        "stranger": wrong.issue("stranger", ["matterfab-client"], client=True),
    }


def settings(**kw: Any) -> KafkaSettings:
    return KafkaSettings(bootstrap="broker.local:9093", **kw)


# ---------------------------------------------------------------------------- arguments


def test_plaintext_arguments_are_exactly_the_basics() -> None:
    assert kafka.client_options(settings()) == {
        "bootstrap_servers": "broker.local:9093",
        "client_id": "matterfab",
        "request_timeout_ms": 30000,
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_ssl_arguments(pki: dict[str, Any], mechanism: str) -> None:
    s = settings(
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="factory",
        sasl_password=PASSWORD,
        ssl_cafile=pki["ca"].pem,
    )
    options = kafka.client_options(s)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "broker.local:9093",
        "client_id": "matterfab",
        "request_timeout_ms": 30000,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "factory",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # aiokafka accepts the combination (it validates protocol/mechanism/credentials itself).
    producer = AIOKafkaProducer(**options, ssl_context=context)
    consumer = AIOKafkaConsumer(**options, ssl_context=context)
    await producer.stop()  # never started: releases what the constructors made
    await consumer.stop()


def test_sasl_plaintext_has_no_tls_and_reads_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    options = kafka.client_options(
        settings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="factory",
            sasl_password_file=secret,
        )
    )
    assert "ssl_context" not in options
    assert options["sasl_plain_password"] == PASSWORD


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Any]) -> None:
    env = {
        "MATTERFAB_KAFKA_BOOTSTRAP": "b1:9093,b2:9093",
        "MATTERFAB_KAFKA_SECURITY_PROTOCOL": "SSL",
        "MATTERFAB_KAFKA_SSL_CAFILE": str(pki["ca"].pem),
        "MATTERFAB_KAFKA_SSL_CERTFILE": str(pki["client"].cert),
        "MATTERFAB_KAFKA_SSL_KEYFILE": str(pki["client"].key),
        "MATTERFAB_KAFKA_SSL_CHECK_HOSTNAME": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = config.load_kafka_settings()
    assert (s.security_protocol, s.ssl_check_hostname) == ("SSL", False)
    context = kafka.client_options(s)["ssl_context"]
    assert not context.check_hostname


@pytest.mark.parametrize(
    ("env", "rules"),
    [
        (
            {"SECURITY_PROTOCOL": "SASL_SSL"},
            ["SASL_MECHANISM must be one of", "SASL_USERNAME must be set",
             "SASL_PASSWORD or MATTERFAB_KAFKA_SASL_PASSWORD_FILE must be set"],
        ),
        ({"SECURITY_PROTOCOL": "TLS"}, ["MATTERFAB_KAFKA_SECURITY_PROTOCOL: Input should be"]),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "GSSAPI", "SASL_USERNAME": "u",
             "SASL_PASSWORD": PASSWORD},
            ["MATTERFAB_KAFKA_SASL_MECHANISM: Input should be"],
        ),
        ({"SASL_PASSWORD": PASSWORD}, ["SASL_PASSWORD is set but", "uses no SASL"]),
        ({"SSL_CAFILE": "/ca.pem"}, ["SSL_CAFILE is set but", "uses no TLS"]),
        (
            {"SECURITY_PROTOCOL": "SSL", "SSL_CERTFILE": "/c.pem"},
            ["SSL_CERTFILE and MATTERFAB_KAFKA_SSL_KEYFILE must be set together"],
        ),
    ],
)  # fmt: skip
def test_broken_settings_name_the_variable_and_rule(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], rules: list[str]
) -> None:
    monkeypatch.setenv("MATTERFAB_KAFKA_BOOTSTRAP", "b:9093")
    for name, value in env.items():
        monkeypatch.setenv(f"MATTERFAB_KAFKA_{name}", value)
    with pytest.raises(StackError) as error:
        config.load_kafka_settings()
    for rule in rules:
        assert rule in str(error.value)
    assert PASSWORD not in str(error.value)


def test_password_never_in_repr_nor_errors(tmp_path: Path) -> None:
    s = settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=PASSWORD,
        ssl_cafile=tmp_path / "missing-ca.pem",
    )
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())
    with pytest.raises(StackError, match="MATTERFAB_KAFKA_SSL_CAFILE: cannot load") as error:
        kafka.client_options(s)
    assert PASSWORD not in str(error.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    unreadable = settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_file=empty,
    )
    with pytest.raises(StackError, match=r"SASL_PASSWORD_FILE: .* is empty"):
        kafka.client_options(unreadable)


# ---------------------------------------------------------------------------- real handshakes


class TlsServer:
    """A TLS socket server on 127.0.0.1: completes handshakes, records the client's cert."""

    def __init__(self, cert: Issued, client_ca: Path | None = None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert, cert.key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[dict[str, Any] | None] = []
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes.append(tls.getpeercert())
            except (ssl.SSLError, OSError) as exc:
                self.failures.append(type(exc).__name__)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(pki: dict[str, Any]) -> Iterator[TlsServer]:
    srv = TlsServer(pki["server"], client_ca=pki["ca"].pem)
    yield srv
    srv.close()


def handshake(context: ssl.SSLContext, port: int, hostname: str = "broker.local") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.do_handshake()


def mtls(pki: dict[str, Any], ca: TestCA, client: str = "client", **kw: Any) -> ssl.SSLContext:
    return kafka.ssl_context(
        settings(
            security_protocol="SSL",
            ssl_cafile=ca.pem,
            ssl_certfile=pki[client].cert,
            ssl_keyfile=pki[client].key,
            **kw,
        )
    )


def test_context_trusts_only_the_given_ca(pki: dict[str, Any], server: TlsServer) -> None:
    context = mtls(pki, pki["ca"])
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "broker CA"),),)]
    handshake(context, server.port)
    for _ in range(100):  # the server thread records it a moment later
        if server.handshakes:
            break
        time.sleep(0.02)
    assert server.handshakes[-1] is not None  # the server saw our client certificate
    subject = dict(x[0] for x in server.handshakes[-1]["subject"])
    assert subject["commonName"] == "matterfab-client"


def test_wrong_ca_fails_the_handshake(pki: dict[str, Any], server: TlsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(mtls(pki, pki["wrong"]), server.port)


def test_client_certificate_from_another_ca_is_refused_by_the_server(
    pki: dict[str, Any], server: TlsServer
) -> None:
    with contextlib.suppress(ssl.SSLError, OSError):
        handshake(mtls(pki, pki["ca"], client="stranger"), server.port)
        # TLS 1.3: the server's refusal arrives with the first read
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            ctx = mtls(pki, pki["ca"], client="stranger")
            with ctx.wrap_socket(raw, server_hostname="broker.local") as tls:
                tls.recv(1)
    assert server.failures, "the server accepted a client certificate of another CA"


def test_hostname_check_and_its_switch(pki: dict[str, Any], server: TlsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(mtls(pki, pki["ca"]), server.port, hostname="kafka.elsewhere")
    handshake(mtls(pki, pki["ca"], ssl_check_hostname=False), server.port, "kafka.elsewhere")


async def test_aiokafka_opens_tls_with_our_arguments(
    pki: dict[str, Any], server: TlsServer
) -> None:
    """aiokafka itself, given client_options, completes a TLS handshake (with our client
    certificate) against the server; the server then speaks no Kafka, so the start fails as
    Unreachable in one line naming the servers. With the wrong CA no handshake completes."""
    for ca, completes in ((pki["ca"], True), (pki["wrong"], False)):
        before = len(server.handshakes)
        s = KafkaSettings(
            bootstrap=f"127.0.0.1:{server.port}",
            security_protocol="SSL",
            ssl_cafile=ca.pem,
            ssl_certfile=pki["client"].cert,
            ssl_keyfile=pki["client"].key,
            connect_timeout_s=3,
            request_timeout_ms=2000,
        )
        with pytest.raises(StackError) as error:
            await kafka.check_broker(s)
        assert f"Kafka at 127.0.0.1:{server.port}" in str(error.value)
        if not completes:  # said as what it is, with the variable to fix
            assert isinstance(error.value, Refused), error.value
            assert "TLS handshake failed" in str(error.value)
            assert "MATTERFAB_KAFKA_SSL_CAFILE" in str(error.value)
        await asyncio.sleep(0.1)
        assert (len(server.handshakes) > before) is completes
