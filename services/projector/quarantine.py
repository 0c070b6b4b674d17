"""Events the projection cannot take, set aside so their partition goes on: finding them, and the
``projection_quarantine`` table that keeps them until ``orq quarantine retry`` applies them after a fix.

A batch whose transaction fails because of its data (:func:`services.projector.failures.is_data_error`) is
split in halves, each committed on its own, recursively, until the events that fail alone are found; each
of those is written to the quarantine table *and* the checkpoint moved past it, in one transaction. Events
before and after it in the batch are projected as usual. A database failure anywhere in this stops the
search and is retried whole later (with backoff): only an event that fails alone, with a data error, is set
aside.

Invariant: below a partition's checkpoint every event of its log is in exactly one of ``event_archive``
(projected) and ``projection_quarantine`` (not projected). Replay folds the archive, so it skips quarantined
events exactly as the live projection did; a retry that succeeds moves the event into the archive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from services.projector.failures import describe, is_data_error
from services.projector.store import Decoded
from shared.infra.clock import stream_id_parts
from shared.readmodel import schema

log = logging.getLogger(__name__)

TABLE = schema.projection_quarantine
ERROR_CHARS = 2000

R = TypeVar("R")


async def apply_or_set_aside(
    records: list[R], commit: Callable[[list[R]], Awaitable[None]],
    set_aside: Callable[[R, BaseException], Awaitable[None]], *, label: str = "", top: bool = True,
) -> None:
    """``commit(records)`` in one transaction; when that fails because of the data, commit each half on its
    own (in order, recursively) and ``set_aside`` every record that fails alone.

    A database failure (or a fenced checkpoint) propagates at once: what was committed so far stays committed
    (the checkpoint says so), the rest is retried whole later. Cost: about 2·log2(n) extra transactions per
    poisoned event in a batch of n, only when a batch fails.
    """
    try:
        await commit(records)
        return
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if top and len(records) > 1:
            log.warning("%s: a batch of %d events failed (%s); splitting it to find what cannot be projected",
                        label, len(records), describe(exc))
        failure: BaseException | None = exc if len(records) == 1 else None
    # Outside the handler: a database error while splitting is not chained to this one, and the failed
    # attempt's frames are not kept alive down the recursion.
    if failure is not None:
        await set_aside(records[0], failure)
        return
    middle = len(records) // 2
    await apply_or_set_aside(records[:middle], commit, set_aside, label=label, top=False)
    await apply_or_set_aside(records[middle:], commit, set_aside, label=label, top=False)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One quarantined event (its body is read apart: it may be large)."""

    partition: int
    stream_id: str
    type: str
    tenant_id: str
    aggregate_id: str
    error: str
    body_bytes: int
    quarantined_at: int
    retries: int
    retried_at: int | None
    retry_requested_at: int | None

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.partition, *stream_id_parts(self.stream_id))


# --- setting aside ------------------------------------------------------------------------------------------------


def rows_for(decoded: Decoded, error: str, now_ms: int, chunk_bytes: int) -> list[dict[str, Any]]:
    """The table rows of one event set aside: its archive row's identity, the error, the body in pieces."""
    archive, body = decoded.archive, bytes(decoded.record.body)
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)] or [b""]
    first = {
        "partition": archive["partition"], "ms": archive["ms"], "seq": archive["seq"], "chunk": 0,
        "stream_id": decoded.record.id, "type": archive["type"], "tenant_id": archive["tenant_id"],
        "aggregate_id": archive["aggregate_id"], "error": error[:ERROR_CHARS], "body": pieces[0],
        "body_bytes": len(body), "chunks": len(pieces), "quarantined_at": now_ms, "retries": 0,
        "retried_at": None, "retry_requested_at": None,
    }
    return [first, *({**first, "chunk": n, "body": piece, "error": ""} for n, piece in enumerate(pieces[1:], 1))]


async def insert_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    # One statement per piece: an executemany would be merged by the driver into one multi-row INSERT,
    # which could exceed max_allowed_packet again.
    for row in rows:
        await conn.execute(insert(TABLE), row)


def report(p: int, decoded: Decoded, error: str) -> None:
    """The one ERROR line per quarantined event."""
    archive = decoded.archive
    log.error(
        "partition %d: event %s (%s, tenant %s, aggregate %s) cannot be projected and was quarantined: %s",
        p, decoded.record.id, archive["type"] or "?", archive["tenant_id"] or "?", archive["aggregate_id"] or "?",
        error, extra={"tenant_id": archive["tenant_id"], "partition": p, "stream_id": decoded.record.id},
    )


# --- reading and retry bookkeeping --------------------------------------------------------------------------------


def _is(entry: Quarantined) -> ColumnElement[bool]:
    p, ms, seq = entry.key
    return and_(TABLE.c.partition == p, TABLE.c.ms == ms, TABLE.c.seq == seq)


def _any_of(entries: Iterable[Quarantined]) -> ColumnElement[bool]:
    return or_(*(_is(e) for e in entries))


async def listing(
    conn: AsyncConnection, *, partition: int | None = None, tenant: str | None = None,
    stream_ids: Sequence[str] = (), requested_only: bool = False, limit: int = 0,
) -> list[Quarantined]:
    """Quarantined events in (partition, stream id) order, filtered."""
    stmt = select(*(TABLE.c[f.name] for f in fields(Quarantined))).where(TABLE.c.chunk == 0)
    if partition is not None:
        stmt = stmt.where(TABLE.c.partition == partition)
    if tenant:
        stmt = stmt.where(TABLE.c.tenant_id == tenant)
    if stream_ids:
        stmt = stmt.where(TABLE.c.stream_id.in_(list(stream_ids)))
    if requested_only:
        stmt = stmt.where(TABLE.c.retry_requested_at.is_not(None))
    stmt = stmt.order_by(TABLE.c.partition, TABLE.c.ms, TABLE.c.seq)
    if limit:
        stmt = stmt.limit(limit)
    return [Quarantined(**row) for row in (await conn.execute(stmt)).mappings()]


async def body_of(conn: AsyncConnection, entry: Quarantined) -> bytes:
    pieces = (await conn.execute(select(TABLE.c.body).where(_is(entry)).order_by(TABLE.c.chunk))).scalars()
    return b"".join(bytes(piece) for piece in pieces)


async def request_retry(conn: AsyncConnection, entries: Sequence[Quarantined], now_ms: int) -> None:
    """Mark ``entries`` for the projector holding their partition to retry (``orq quarantine retry``)."""
    for chunk in _chunks(entries):
        await conn.execute(update(TABLE).where(TABLE.c.chunk == 0, _any_of(chunk)).values(retry_requested_at=now_ms))


async def record_failure(conn: AsyncConnection, entry: Quarantined, error: str, now_ms: int) -> None:
    """A retry failed again: keep the event, with the new error, and clear the request."""
    await conn.execute(update(TABLE).where(_is(entry), TABLE.c.chunk == 0).values(
        error=error[:ERROR_CHARS], retries=TABLE.c.retries + 1, retried_at=now_ms, retry_requested_at=None))


async def remove(conn: AsyncConnection, entry: Quarantined) -> None:
    await conn.execute(delete(TABLE).where(_is(entry)))


def _chunks(entries: Sequence[Quarantined], size: int = 200) -> Iterable[Sequence[Quarantined]]:
    for i in range(0, len(entries), size):
        yield entries[i : i + size]
