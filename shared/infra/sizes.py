"""How big a value is once encoded, found without encoding it when it may be huge.

A step's output can hold the same object many times (``{"a": "{{ steps.0.output }}", "b": …}`` shares one
object), so its encoded form can be exponentially larger than its memory. :func:`fits` walks the value and
stops as soon as the budget is spent, so checking a limit costs at most the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from shared.infra.errors import StepFailed

_encoder = msgspec.msgpack.Encoder()

# msgpack spends at most this on a scalar, or on a container's or string's header.
_OVERHEAD = 9


def fits(value: Any, budget: int) -> bool:
    """True if ``value`` encodes (msgpack or JSON) to roughly ``budget`` bytes or fewer; an upper estimate."""
    stack = [value]
    spent = 0
    while stack:
        item = stack.pop()
        spent += _OVERHEAD
        if isinstance(item, str | bytes):
            spent += len(item) if isinstance(item, bytes) else len(item.encode())
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        if spent > budget:
            return False
    return True


def encode_output(output: Any, limit: int) -> bytes:
    """A step's output as stored (msgpack); one over ``ORQ_MAX_OUTPUT_BYTES`` (``limit``) fails the step where it
    is produced, whoever produced it (an executor or a robot), rather than stalling the projection downstream."""
    try:
        body = _encoder.encode(output) if fits(output, 2 * limit) else b""
    except (OverflowError, TypeError, msgspec.EncodeError) as exc:  # JSON's unbounded integers, foreign objects
        raise StepFailed(f"step output is not serialisable: {exc}") from None
    if not body or len(body) > limit:
        size = f"{len(body)} bytes" if body else f"over {2 * limit} bytes"
        raise StepFailed(f"output_too_large: the step's output is {size}, over ORQ_MAX_OUTPUT_BYTES={limit}")
    return body
