"""Work queues: created, changed and deleted as events (checked on Redis state); listed and counted from SQL."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Row, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_tenant
from services.api.bodies import read_json
from services.api.context import context
from services.api.ownership import owned_queue, owned_row
from services.api.pagination import live_page, page_request
from services.api.schemas import Queue, QueueIn, QueueItemAtRisk, QueuePage, QueueStats, QueueUpdateIn
from shared.domain.queues.definitions import (
    NAME_TAKEN_GUARD,
    QUEUE_CHANGED_GUARD,
    QueueState,
    create_unit,
    delete_unit,
    update_unit,
)
from shared.infra.clock import iso, new_id, now_ms
from shared.infra.errors import Conflict, NotFound
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.log.commit import Applied, Outcome, Refused
from shared.log.events import QueueSnapshot
from shared.readmodel.schema import queue_items, work_queues

# Open items in the last fifth of their SLA (or that close to their deadline) are "at risk".
RISK_FRACTION = 0.2
AT_RISK_SHOWN = 20
STATUSES = ("new", "in_progress", "completed", "failed", "abandoned", "retried")


def queue_view(queue_id: str, q: QueueSnapshot) -> Queue:
    return Queue(
        id=queue_id,
        name=q.name,
        description=q.description,
        max_retries=q.max_retries,
        sla_minutes=q.sla_minutes,
        abandon_after_minutes=q.abandon_after_minutes,
        unique_reference=q.unique_reference,
        created_at=iso(q.created_at),
        updated_at=iso(q.updated_at),
    )


def _row_view(row: Row[Any]) -> Queue:
    m = row._mapping
    return Queue(
        id=m["id"],
        name=m["name"],
        description=m["description"],
        max_retries=m["max_retries"],
        sla_minutes=m["sla_minutes"],
        abandon_after_minutes=m["abandon_after_minutes"],
        unique_reference=bool(m["unique_reference"]),
        created_at=iso(m["created_at"]),
        updated_at=iso(m["updated_at"]),
    )


def queue_busy() -> Conflict:
    """The 409 of a queue command whose every attempt saw the queue change under it."""
    return Conflict("the queue is being changed concurrently, try again")


def moved_or_gone(queue_id: str, outcome: Outcome) -> Moved:
    """What a queue unit that was not applied means: read again when the queue changed since the attempt read it
    (its revision or ``unique_reference``); anything else (the queue deleted meanwhile) is a 404."""
    if isinstance(outcome, Refused) and outcome.label == QUEUE_CHANGED_GUARD:
        return MOVED
    raise NotFound(f"queue {queue_id} not found")


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a queue named {name!r} exists already", field="name")


async def create_queue(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    body = await read_json(request, QueueIn)
    now = now_ms()
    queue_id = new_id()
    snapshot = QueueSnapshot(
        name=body.name,
        description=body.description,
        max_retries=body.max_retries,
        sla_minutes=body.sla_minutes,
        abandon_after_minutes=body.abandon_after_minutes,
        unique_reference=body.unique_reference,
        created_at=now,
        updated_at=now,
    )
    unit = create_unit(p=tenant.partition, tenant_id=tenant.id, queue_id=queue_id, snapshot=snapshot, now_ms=now)
    match await ctx.committer.commit(unit):
        case Applied():
            return responses.json(queue_view(queue_id, snapshot), 201)
        case Refused(label=label) if label == NAME_TAKEN_GUARD:
            raise _name_taken(body.name)
        case _:
            raise Conflict("queue id collision, try again")


async def update_queue(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue_id = request.path_params["id"]
    await owned_queue(ctx, tenant, queue_id)  # an unknown queue is a 404, whatever the body
    body = await read_json(request, QueueUpdateIn)
    changes = {f: v for f in QueueUpdateIn.__struct_fields__ if (v := getattr(body, f)) is not msgspec.UNSET}

    async def attempt() -> Response | Moved:
        queue = await owned_queue(ctx, tenant, queue_id)
        if all(getattr(queue.snapshot, f) == v for f, v in changes.items()):
            return responses.json(queue_view(queue_id, queue.snapshot))  # nothing changes: nothing appended
        now = now_ms()
        snapshot = msgspec.structs.replace(queue.snapshot, **changes, updated_at=now)
        unit = update_unit(p=tenant.partition, queue=queue, snapshot=snapshot, now_ms=now)
        outcome = await ctx.committer.commit(unit)
        match outcome:
            case Applied():
                return responses.json(queue_view(queue_id, snapshot))
            case Refused(label=label) if label == NAME_TAKEN_GUARD:
                raise _name_taken(snapshot.name)
            case _:
                return moved_or_gone(queue_id, outcome)

    return await optimistically(attempt, exhausted=queue_busy())


async def delete_queue(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue_id = request.path_params["id"]

    async def attempt() -> Response | Moved:
        queue = await owned_queue(ctx, tenant, queue_id)
        outcome = await ctx.committer.commit(delete_unit(p=tenant.partition, queue=queue, now_ms=now_ms()))
        if isinstance(outcome, Applied):
            return responses.no_content()
        return moved_or_gone(queue_id, outcome)

    # Changing faster than we read: as good as gone for a delete.
    return await optimistically(attempt, exhausted=NotFound(f"queue {queue_id} not found"))


async def get_queue(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    row = await owned_row(ctx.engine, work_queues, "queue", request.path_params["id"], tenant)
    return responses.json(_row_view(row))


async def list_queues(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    items, cursor = await live_page(ctx.engine, work_queues, tenant.id, page_request(request))
    return responses.json(QueuePage(items=[_row_view(r) for r in items], next_cursor=cursor))


async def queue_stats(conn: AsyncConnection, queue: QueueState, now: int) -> QueueStats:
    """Counts by status, mean processing time, SLA breaches and items at risk, as of ``now``.

    An item's SLA runs from when its first attempt was added (``origin_at``; a retry keeps its original's) for
    the queue's ``sla_minutes``. Only the last item of each retry chain (no ``retry_id``) counts: a breach is
    one finished after its SLA or still open past it; at risk is open, not breached, and within the last
    fifth of its SLA or that close to its deadline.
    """
    c = queue_items.c
    sla_ms = queue.snapshot.sla_minutes * 60_000
    window = int(sla_ms * RISK_FRACTION)
    mine = and_(c.queue_id == queue.id, c.tenant_id == queue.tenant_id)
    rows = (await conn.execute(select(c.status, func.count()).where(mine).group_by(c.status))).all()
    counts: dict[str, int] = {str(status): int(count) for status, count in rows}
    avg = (await conn.execute(select(func.avg(c.processing_ms)).where(mine, c.status == "completed"))).scalar()
    last = and_(mine, c.retry_id.is_(None))
    breached = func.coalesce(c.finished_at, now) > c.origin_at + sla_ms
    breaches = (await conn.execute(select(func.count()).where(last, breached))).scalar_one()
    due = c.origin_at + sla_ms
    at_risk = and_(
        last,
        c.status.in_(("new", "in_progress")),
        due >= now,
        or_(due <= now + window, and_(c.deadline.is_not(None), c.deadline <= now + window)),
    )
    risky = (await conn.execute(select(func.count()).where(at_risk))).scalar_one()
    soonest = case((and_(c.deadline.is_not(None), c.deadline < due), c.deadline), else_=due)
    shown = (
        await conn.execute(
            select(c.id, c.reference, c.status, c.origin_at, c.deadline)
            .where(at_risk)
            .order_by(soonest, c.id)
            .limit(AT_RISK_SHOWN)
        )
    ).all()
    return QueueStats(
        **{status: int(counts.get(status, 0)) for status in STATUSES},
        avg_processing_ms=round(float(avg), 1) if avg is not None else 0.0,
        sla_breaches=int(breaches),
        at_risk=int(risky),
        at_risk_items=[
            QueueItemAtRisk(
                id=r.id, reference=r.reference, status=r.status, sla_due_at=iso(r.origin_at + sla_ms),
                deadline=iso(r.deadline),
            )
            for r in shown
        ],
    )


async def get_stats(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue = await owned_queue(ctx, tenant, request.path_params["id"])
    async with ctx.engine.connect() as conn:
        stats = await queue_stats(conn, queue, now_ms())
    return responses.json(stats)


routes = [
    Route("/api/queues", create_queue, methods=["POST"]),
    Route("/api/queues", list_queues, methods=["GET"]),
    Route("/api/queues/{id}", get_queue, methods=["GET"]),
    Route("/api/queues/{id}", update_queue, methods=["PUT"]),
    Route("/api/queues/{id}", delete_queue, methods=["DELETE"]),
    Route("/api/queues/{id}/stats", get_stats, methods=["GET"]),
]
