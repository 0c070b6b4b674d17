"""Time and ids. Logic that depends on time takes ``now_ms`` as a parameter; only edges call these."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A random UUID (hex, 32 chars): unguessable, so ids leak nothing across tenants."""
    return uuid.uuid4().hex


def month_of(ms: int) -> str:
    """``YYYYMM`` of a UTC timestamp: the quota month."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m")


def month_end_ms(ms: int) -> int:
    """Start of the next UTC month: when a monthly quota resets."""
    d = datetime.fromtimestamp(ms / 1000, UTC)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return int(nxt.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stream_id_parts(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
