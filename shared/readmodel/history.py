"""One execution's history: its events in log order, from the event archive and the log's unprojected tail.

The projector archives every event it projects and moves its checkpoint (``projection_checkpoints``) in
the same transaction, and a log is trimmed only below every group's acknowledged position. So, for a
partition whose checkpoint is ``K``, the events up to ``K`` are in ``event_archive`` (one range of the
index ``ix_event_archive_aggregate`` per execution) and the events after ``K`` are still in ``orq:{p}:log``.
A page reads the checkpoint and the archive in one SQL transaction (one snapshot), then the log after
``max(K, cursor)``: no event is missed or served twice, whatever the projector does meanwhile (the same
split ``orq replay`` makes, see ``services/projector/replay.py``).

Every call is bounded: at most ``limit + 1`` archive rows, and at most ``TAIL_SCAN`` log entries (the tail
holds every tenant's events of the partition, so a far-behind projector could make it long). A page that
ran out of scan budget comes back short (possibly empty) with a cursor to go on from.

Events the projector set aside (``projection_quarantine``) are in neither place, so they are not in the
history either, just as they are not in the projection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.clock import stream_id_parts
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import Event, decode
from shared.log.redis import Entries
from shared.readmodel import schema
from shared.readmodel.projection import EXECUTIONS, STEPS, Projection, Row

# The projector's checkpoint row (services/projector/store.py CHECKPOINT_NAME; a test keeps the two equal:
# shared/ may not import a service).
CHECKPOINT_NAME = "main"
# Log entries one call may read past the checkpoint, and how many per XRANGE.
TAIL_SCAN = 5000
TAIL_PAGE = 500
# Events read per round trip when folding (``as_of``).
FOLD_PAGE = 1000
LOG_TYPE = "execution.log"  # what GET …/logs serves
# Stream ids are two unsigned 64-bit integers; the archive's columns are signed (no stored id reaches past them).
MAX_PART = 2**64 - 1
MAX_SQL_PART = 2**63 - 1

Point = tuple[int, int]
START: Point = (0, 0)  # before every entry (Redis never writes 0-0)


@dataclass(frozen=True, slots=True)
class Span:
    """Which of an execution's events to read: those after ``after`` up to ``until`` (inclusive)."""

    tenant_id: str
    partition: int
    execution_id: str
    after: Point = START
    until: Point = (MAX_PART, MAX_PART)
    only_type: str | None = None  # just this event type
    skip_type: str | None = None  # every type but this one


@dataclass(frozen=True, slots=True)
class Page:
    """Events in log order (each with its stream id as ``id``), and where the next page starts (None: the
    span is exhausted)."""

    events: list[Event]
    next: Point | None


def stream_id(point: Point) -> str:
    return f"{point[0]}-{point[1]}"


async def read_page(redis: Redis, engine: AsyncEngine, span: Span, limit: int, *, tail_scan: int = TAIL_SCAN) -> Page:
    """Up to ``limit`` events of ``span``: the archived ones first, then the log's tail."""
    checkpoint, rows = await _archived(engine, span, limit)
    if len(rows) > limit:
        rows = rows[:limit]
        return Page([event for _, event in rows if event is not None], rows[-1][0])
    archived = [event for _, event in rows if event is not None]
    start = max(span.after, checkpoint)
    events, scanned_to = await _tail(redis, span, start, limit - len(archived), tail_scan)
    found = archived + events
    if len(found) > limit:
        found = found[:limit]
        return Page(found, stream_id_parts(found[-1].id))
    return Page(found, scanned_to)


async def _archived(engine: AsyncEngine, span: Span, limit: int) -> tuple[Point, list[tuple[Point, Event | None]]]:
    """The partition's checkpoint, and up to ``limit + 1`` of the span's events archived up to it (None for
    one that cannot be decoded: it still counts as read)."""
    cp = schema.projection_checkpoints
    table = schema.event_archive
    async with engine.connect() as conn, conn.begin():  # one snapshot: the checkpoint and the rows it covers
        where = (cp.c.name == CHECKPOINT_NAME, cp.c.partition == span.partition)
        raw = (await conn.execute(select(cp.c.last_id).where(*where))).scalar_one_or_none()
        checkpoint = stream_id_parts(str(raw)) if raw is not None else START
        upper = _sql(min(checkpoint, span.until))
        after = _sql(span.after)
        if after >= upper:
            return checkpoint, []
        c = table.c
        query = select(c.ms, c.seq, c.body).where(
            c.partition == span.partition,
            c.aggregate_id == span.execution_id,
            c.tenant_id == span.tenant_id,
            _after(c.ms, c.seq, after),
            or_(c.ms < upper[0], and_(c.ms == upper[0], c.seq <= upper[1])),
        )
        if span.only_type is not None:
            query = query.where(c.type == span.only_type)
        if span.skip_type is not None:
            query = query.where(c.type != span.skip_type)
        rows = (await conn.execute(query.order_by(c.ms, c.seq).limit(limit + 1))).all()
    return checkpoint, [((int(r.ms), int(r.seq)), _decoded(bytes(r.body), f"{r.ms}-{r.seq}")) for r in rows]


def _sql(point: Point) -> Point:
    return min(point[0], MAX_SQL_PART), min(point[1], MAX_SQL_PART)


def _after(ms: Any, seq: Any, point: Point) -> Any:
    return or_(ms > point[0], and_(ms == point[0], seq > point[1]))


async def _tail(redis: Redis, span: Span, start: Point, room: int, budget: int) -> tuple[list[Event], Point | None]:
    """Up to ``room + 1`` of the span's events in the log after ``start``, reading at most ``budget`` entries;
    and the point to go on from when the budget ran out first (None when the span's end was reached)."""
    stream = keys.log(span.partition)
    found: list[Event] = []
    position = start
    until = stream_id(span.until)
    if position >= span.until:
        return found, None
    while budget > 0:
        count = min(TAIL_PAGE, budget)
        entries = cast(Entries, await redis.xrange(stream, min=f"({stream_id(position)}", max=until, count=count))
        budget -= len(entries)
        for record in records_of(entries):
            if span.only_type is not None and record.type != span.only_type:
                continue
            if span.skip_type is not None and record.type == span.skip_type:
                continue
            event = _decoded(record.body, record.id)
            if event is not None and event.aggregate_id == span.execution_id and event.tenant_id == span.tenant_id:
                found.append(event)
        if entries:
            position = stream_id_parts(entries[-1][0].decode())
        if len(entries) < count:
            return found, None
        if len(found) > room:
            return found, None  # the caller cuts the page and points after its last event
    return found, position


def _decoded(body: bytes, event_id: str) -> Event | None:
    try:
        return decode(body, event_id)
    except (msgspec.DecodeError, msgspec.ValidationError):  # undecodable or of an unknown type: not history
        return None


@dataclass(frozen=True, slots=True)
class Folded:
    """An execution's projection rows as they stood at a point of its history (None: not queued yet)."""

    execution: Row | None
    steps: list[Row]


async def fold(redis: Redis, engine: AsyncEngine, span: Span) -> Folded:
    """Fold the span's events into a fresh :class:`Projection`: the live projection's own code, so the rows
    are what the projector would have written had it stopped at ``span.until``.

    ``execution.log`` events are not read: they add log rows and change nothing of the execution's.
    """
    projection = Projection()
    span = replace(span, only_type=None, skip_type=LOG_TYPE)
    while True:
        page = await read_page(redis, engine, span, FOLD_PAGE)
        projection.apply_all(page.events)
        if page.next is None:
            break
        span = replace(span, after=page.next)
    return rows_of(projection, span.execution_id)


def rows_of(projection: Projection, execution_id: str) -> Folded:
    """The execution's row and its step rows (by index) out of a projection."""
    steps = sorted(
        (row for row in projection.rows[STEPS].values() if row["execution_id"] == execution_id),
        key=lambda row: int(row["step_index"]),
    )
    return Folded(projection.rows[EXECUTIONS].get(execution_id), steps)
