"""Structured logging: one JSON object per line in services, readable text in the CLI.

Secrets never reach a log: callers pass identifiers (`order_id`, `device_id`) as `extra`, and
the formatter drops any extra field whose name says it is secret, as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

CONTEXT_FIELDS = ("service", "order_id", "device_id", "index", "topic", "partition", "offset")
SECRET_WORDS = (
    "passcode", "password", "private", "secret", "dac_key", "kek", "pin", "salt", "verifier",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object with its context fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record; exceptions as a one-line type and message plus the traceback."""
        out: dict[str, object] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name in CONTEXT_FIELDS or name.startswith("mf_"):
                key = name.removeprefix("mf_")
                if not any(word in key.lower() for word in SECRET_WORDS):
                    out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(service: str | None = None, level: str | None = None) -> None:
    """Configure the root logger: JSON for services, plain text otherwise.

    `level` defaults to the settings' (env `MATTERFAB_LOG_LEVEL`, INFO).
    """
    if level is None:
        from matterfab.config import load_log_settings  # late: config pulls in pydantic-settings

        level = load_log_settings().log_level
    handler = logging.StreamHandler(sys.stderr)
    if service:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(_ServiceFilter(service))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at INFO (every rebalance, every connection).
    for noisy in ("aiokafka", "botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True
