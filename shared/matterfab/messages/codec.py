"""Encode messages to JSON bytes and decode them back, with field-level errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from matterfab.errors import FieldError, InvalidInput
from matterfab.messages.base import Message

M = TypeVar("M", bound=Message)

MAX_MESSAGE_BYTES = 1024 * 1024  # the broker's default max message size; bigger is refused


def encode(message: BaseModel) -> bytes:
    """A message as compact UTF-8 JSON, optional fields left out when unset."""
    return message.model_dump_json(exclude_none=True).encode()


def loc_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as a dotted path: `devices[3].passcode`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


def _rule(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be")
    msg = msg.removeprefix("Value error, ")
    return msg.replace("Input should be", "must be")


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Every pydantic error as a FieldError naming the field and the rule."""
    return [FieldError(loc_path(tuple(e["loc"])), _rule(e)) for e in exc.errors()]


def decode_json(raw: bytes | str) -> Any:
    """Parse JSON, refusing oversized or malformed input with a typed error."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidInput(
            [FieldError("$", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")]
        )
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput([FieldError("$", f"is not valid UTF-8 JSON ({exc})")]) from None


def decode(raw: bytes | str, model: type[M]) -> M:
    """Decode one message of the given model, checking its `type` first."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidInput([FieldError("$", "must be a JSON object")])
    expected = model.model_fields["type"].default
    got = data.get("type")
    if got is None:
        raise InvalidInput([FieldError("type", f"is required (expected {expected!r})")])
    if got != expected:
        raise InvalidInput(
            [FieldError("type", f"unknown message type {str(got)[:64]!r}; expected {expected!r}")]
        )
    try:
        msg = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_errors(exc)) from None
    cross = getattr(msg, "cross_field_errors", None)
    if cross is not None and (errors := cross()):
        raise InvalidInput(errors)
    return msg
