"""Service logs are JSON with context fields and never carry fields named as secrets."""

from __future__ import annotations

import json
import logging

from matterfab.logs import JsonFormatter


def test_json_lines_keep_context_and_drop_secret_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "built %s", ("dev",), None)
    record.order_id = "O-1"
    record.device_id = "O-1/0000001"
    record.mf_count = 3
    record.mf_passcode = 20202021
    record.mf_dac_key = "00" * 32
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "built dev"
    assert line["order_id"] == "O-1" and line["device_id"] == "O-1/0000001" and line["count"] == 3
    assert "passcode" not in line and "dac_key" not in line
    assert "20202021" not in json.dumps(line)


def test_connection_secrets_are_dropped_by_name() -> None:
    """The Kafka and S3 connection settings' secrets, should a caller ever pass them."""
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "connecting", (), None)
    record.mf_sasl_password = "sasl-pass-0123"
    record.mf_ssl_key_password = "key-pass-0123"
    record.mf_secret_key = "s3-secret-0123"
    record.mf_sasl_username = "factory"
    line = JsonFormatter().format(record)
    assert "sasl-pass-0123" not in line and "key-pass-0123" not in line
    assert "s3-secret-0123" not in line
    assert json.loads(line)["sasl_username"] == "factory"
