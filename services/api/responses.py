"""JSON responses encoded with msgspec (Structs, dicts and lists alike)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

_encoder = msgspec.json.Encoder()


def encode(body: Any) -> bytes:
    return _encoder.encode(body)


def json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return raw_json(encode(body), status, headers)


def raw_json(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A response whose body is JSON already (e.g. a stored idempotent reply)."""
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (the clients are created with ``decode_responses=False``)."""
    return value if isinstance(value, bytes) else value.encode()
