"""Request bodies: JSON decoded into msgspec Structs, with errors that name the offending field.

Malformed JSON is a 400; valid JSON of the wrong shape (missing or unknown field, wrong type, out of bounds)
is a 422 whose ``field`` is a path like ``steps[0].timeout_s``. Free-form values (``params``) are checked to
fit everywhere they will be stored: msgpack in Redis and JSON columns in MySQL.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from shared.infra.errors import BadRequest, ValidationFailed

T = TypeVar("T")

# MySQL refuses JSON documents nested deeper than 100; leave room for the envelope the projector adds.
MAX_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


async def read_json(request: Request, type_: type[T], *, empty: T | None = None) -> T:
    """Decode the body as ``type_``; an empty body gives ``empty`` when the caller allows one."""
    body = await request.body()
    if not body.strip() and empty is not None:
        return empty
    return decode(body, type_)


def decode(body: bytes, type_: type[T]) -> T:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None


def validation_error(detail: str) -> ValidationFailed:
    """Turn msgspec's "<problem> - at `$.a[0].b`" into a 422 naming the field ``a[0].b``."""
    path = ""
    if (m := _AT.search(detail)) is not None:
        path = m.group("path").replace("[...]", "").lstrip(".")
        detail = detail[: m.start()]
    if (m := _FIELD.match(detail)) is not None:
        path = f"{path}.{m.group('name')}" if path else m.group("name")
    if not path:
        return ValidationFailed(f"request body: {detail}")
    return ValidationFailed(f"{path}: {detail}", field=path)


def check_json_value(value: Any, field: str, depth: int = 0) -> None:
    """Refuse free-form values that could be decoded but not stored: huge integers, deep nesting."""
    if depth > MAX_DEPTH:
        raise ValidationFailed(f"{field}: nested deeper than {MAX_DEPTH} levels", field=field)
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValidationFailed(f"{field}: integer out of range", field=field)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_json_value(v, f"{field}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_value(v, f"{field}[{i}]", depth + 1)
