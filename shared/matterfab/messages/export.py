"""Generate `schemas/*.schema.json` and `schemas/asyncapi.yaml` from the message models, and
`schemas/bucket/*.schema.json` from the bucket's stored-object models.

Run `make schemas` after changing a model; a test fails when the committed files drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from matterfab.messages import DEAD_LETTER, TOPIC_MESSAGES, WORK_ORDERS
from matterfab.services import registry

KEYS = {
    "mfg.work-orders": "order_id",
    "mfg.devices.allocated": "device_id",
    "mfg.devices.attested": "device_id",
    "mfg.images.ready": "device_id",
    "mfg.order-events": "order_id",
    "mfg.station-results": "device_id",
    "mfg.dac-ledger": "dac_serial (hex)",
    "mfg.dead-letter": "key of the original message",
    "mfg.dac.requests": "device_id",
    "mfg.dac.replies": "device_id",
}
# Producers that are not services of the registry (services.registry lists the rest).
OUTSIDE_PRODUCERS = {
    WORK_ORDERS: "ERP systems, `matterfab order submit`",
    DEAD_LETTER: "any service",
}


def producers(topic: str) -> str:
    """Who writes `topic`: the services that announce on it, or the outside producers."""
    return OUTSIDE_PRODUCERS.get(topic) or ", ".join(registry.producers(topic))


def schema_name(model: type) -> str:
    """File name of a model's JSON Schema: its `type` with the version, e.g. work-order.v1."""
    return str(model.model_fields["type"].default).replace("/", ".")  # type: ignore[attr-defined]


def render() -> dict[str, str]:
    """Every generated file name and its text."""
    files: dict[str, str] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, model in TOPIC_MESSAGES.items():
        name = schema_name(model)
        schema = model.model_json_schema(mode="serialization")  # type: ignore[attr-defined]
        files[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        msg_id = model.__name__
        messages[msg_id] = {
            "name": msg_id,
            "title": model.__doc__.strip().splitlines()[0] if model.__doc__ else msg_id,
            "contentType": "application/json",
            "payload": {"$ref": f"./{name}.schema.json"},
            "bindings": {"kafka": {"key": {"type": "string", "description": KEYS[topic]}}},
        }
        channel_id = topic.replace(".", "_").replace("-", "_")
        channels[channel_id] = {
            "address": topic,
            "description": f"Key: {KEYS[topic]}. Produced by {producers(topic)}.",
            "messages": {msg_id: {"$ref": f"#/components/messages/{msg_id}"}},
        }
        operations[f"publish_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
        }
    asyncapi = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "matterfab",
            "version": "1.0.0",
            "description": "Matter factory data over Kafka: topics, keys and message schemas. "
            "Every message is UTF-8 JSON with a versioned `type`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi, sort_keys=False, width=100)
    return files


def main(argv: list[str]) -> int:
    """Write the generated files into the folder given (default `schemas`)."""
    out = Path(argv[0] if argv else "schemas")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
    # The bucket's stored objects, beside the messages (matterfab/bucket/catalog.py).
    from matterfab.bucket import catalog

    (out / "bucket").mkdir(exist_ok=True)
    for name, text in catalog.render().items():
        (out / "bucket" / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
