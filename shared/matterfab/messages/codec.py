"""Encode messages to JSON bytes and decode them back, with field-level errors."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from matterfab.errors import FieldError, InvalidInput
from matterfab.messages.base import Message

M = TypeVar("M", bound=Message)

MAX_MESSAGE_BYTES = 1024 * 1024  # the broker's default max message size; bigger is refused
# Errors listed per message: a million-device order with a bad value in every row must still
# give a rejected event that fits in one Kafka message (pydantic reports every row).
MAX_ERRORS = 50


def encode(message: BaseModel) -> bytes:
    """A message as compact UTF-8 JSON, optional fields left out when unset."""
    return message.model_dump_json(exclude_none=True).encode()


def dumps_indented(doc: Any) -> str:
    """`json.dumps(doc, sort_keys=True, indent=1)`, the same text, about twice as fast.

    Why not json.dumps: with `indent` set, the standard library leaves its C encoder for a
    pure-Python generator, ~40 us for an `onboarding.json` (the builder writes one per device,
    issue #26). This walks the document once, with the C string escaper, dispatching on exact
    types: it takes what a pydantic `mode="json"` dump gives (dict with str keys, list, str,
    int, float, bool, None) and raises TypeError on anything else. tests/unit/test_codec_json.py
    proves it equal to json.dumps, byte for byte, on real records and generated documents.
    """
    return _indented(doc, "")


def _indented(value: Any, pad: str) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is dict:
        if not value:
            return "{}"
        inner = pad + " "
        items = []
        for key in sorted(value):
            if type(key) is not str:
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            items.append(encode_basestring_ascii(key) + ": " + _indented(value[key], inner))
        return "{\n" + inner + (",\n" + inner).join(items) + "\n" + pad + "}"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        inner = pad + " "
        items = [_indented(item, inner) for item in value]
        return "[\n" + inner + (",\n" + inner).join(items) + "\n" + pad + "]"
    if kind is float:
        return json.dumps(value)  # its repr, or NaN / Infinity as json.dumps writes them
    raise TypeError(f"Object of type {kind.__name__} is not JSON serializable")


def loc_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as a dotted path: `devices[3].passcode`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


# Pydantic error types whose stock wording ("Input should be a valid integer, unable to parse
# string as an integer") reads like a parser trace: say the rule the sender broke instead.
_TYPE_RULES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
}


def _rule(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    if kind in _TYPE_RULES:
        return _TYPE_RULES[kind]
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_too_short":
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "too_short":
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx['pattern']}"
    if isinstance(ctx.get("error"), InvalidInput):
        # A validator that raised our own error: its message already names the rule (its
        # field is the one pydantic reports, so do not repeat it: "passcode: passcode: ...").
        return "; ".join(e.message for e in ctx["error"].errors)
    if kind == "literal_error":
        return "must be one of " + str(ctx.get("expected", msg.removeprefix("Input should be ")))
    msg = msg.removeprefix("Value error, ")
    return msg.replace("Input should be", "must be")


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Every pydantic error as a FieldError naming the field and the rule (at most MAX_ERRORS).

    Past the limit, one last item says how many more there were.
    """
    raw = exc.errors()
    errors = [FieldError(loc_path(tuple(e["loc"])), _rule(e)) for e in raw[:MAX_ERRORS]]
    if len(raw) > MAX_ERRORS:
        errors.append(FieldError("$", f"and {len(raw) - MAX_ERRORS} more errors not listed"))
    return errors


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
    """Decode one message of the given model, checking its `type` first.

    A message that parses and validates as it is (every message our services send) is read by
    pydantic's own JSON parser in one step, ~2x faster than json.loads then validation; it is
    taken only if it named its `type` (the model's default would otherwise stand in for it).
    Anything else goes the careful way, which names the field and the rule.
    """
    msg = _as_is(raw, model)
    if msg is None:
        msg = _carefully(raw, model)
    cross = getattr(msg, "cross_field_errors", None)
    if cross is not None and (errors := cross()):
        raise InvalidInput(errors)
    return msg


def _as_is(raw: bytes | str, model: type[M]) -> M | None:
    """The message if it validates as it is and names its `type`, else None."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = model.model_validate_json(raw)
    except ValidationError:
        return None
    return msg if "type" in msg.model_fields_set else None


def _carefully(raw: bytes | str, model: type[M]) -> M:
    """json.loads, the `type`, then validation, each refusal naming its field and rule."""
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
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_errors(exc)) from None
