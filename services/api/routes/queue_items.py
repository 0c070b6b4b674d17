"""Queue items: added (one or up to 10,000 at once), claimed, progressed and finished as events, checked on
Redis state; listed and shown with their history from SQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_tenant
from services.api.bodies import check_json_value, read_json
from services.api.context import ApiContext, context
from services.api.listing import one_of
from services.api.ownership import MAX_ID_LENGTH, owned_queue
from services.api.pagination import keyset_page, page_request
from services.api.routes.queues import STATUSES, moved_or_gone, queue_busy
from services.api.schemas import (
    ClaimIn,
    QueueItem,
    QueueItemChange,
    QueueItemDetail,
    QueueItemError,
    QueueItemIn,
    QueueItemPage,
    QueueItemsAdded,
    QueueItemsBulkIn,
    QueueItemUpdateIn,
)
from shared.domain.aggregates import TenantState
from shared.domain.queues.claims import IN_PROGRESS, abandon_due, claim_unit, claimed_id, completed, failed, noted
from shared.domain.queues.definitions import QueueState
from shared.domain.queues.items import (
    DUPLICATE_REFERENCE_GUARD,
    MAX_TIME_MS,
    ItemState,
    NewItem,
    add_unit,
    new_snapshot,
    read_item,
)
from shared.infra.clock import iso, new_id, now_ms, stream_id_parts
from shared.infra.errors import Conflict, NotFound, ValidationFailed
from shared.infra.optimistic import Moved, optimistically
from shared.log import keys
from shared.log.commit import Applied, Refused
from shared.log.events import QueueItemSnapshot
from shared.log.redis import text
from shared.readmodel.schema import queue_item_data, queue_item_history, queue_items

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ITEM_INDEX = re.compile(r"^items\[(?P<index>\d+)\]")
LAZY_SWEEP_MS = 1_000


# --- views ---------------------------------------------------------------------------------------------------


def item_view(item_id: str, s: QueueItemSnapshot, data: dict[str, Any], result: Any = None) -> QueueItem:
    return QueueItem(
        id=item_id,
        queue_id=s.queue_id,
        status=s.status,
        priority=s.priority,
        reference=s.reference,
        data=data,
        deadline=iso(s.deadline),
        defer_until=iso(s.defer_until),
        retry_count=s.retry_count,
        retry_of=s.retry_of,
        retry_id=s.retry_id,
        processed_by=s.processed_by,
        execution_id=s.execution_id,
        progress=s.progress,
        result=result,
        error=QueueItemError(message=s.error.message, kind=s.error.kind) if s.error is not None else None,
        created_at=iso(s.created_at),
        started_at=iso(s.started_at),
        finished_at=iso(s.finished_at),
        processing_ms=s.processing_ms,
    )


def _row_fields(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    kind = m["error_kind"]
    return {
        "id": m["id"],
        "queue_id": m["queue_id"],
        "status": m["status"],
        "priority": m["priority"],
        "reference": m["reference"],
        "data": m["data"] if m["data"] is not None else {},
        "deadline": iso(m["deadline"]),
        "defer_until": iso(m["defer_until"]),
        "retry_count": m["retry_count"] or 0,
        "retry_of": m["retry_of"],
        "retry_id": m["retry_id"],
        "processed_by": m["processed_by"],
        "execution_id": m["execution_id"],
        "progress": m["progress"],
        "result": m["result"],
        "error": QueueItemError(message=m["error_message"] or "", kind=kind) if kind is not None else None,
        "created_at": iso(m["created_at"]),
        "started_at": iso(m["started_at"]),
        "finished_at": iso(m["finished_at"]),
        "processing_ms": m["processing_ms"],
    }


def _item_query() -> Any:
    return select(queue_items, queue_item_data.c.data).outerjoin(
        queue_item_data, queue_item_data.c.item_id == queue_items.c.id
    )


# --- input ---------------------------------------------------------------------------------------------------


def _ms(value: datetime | None, field: str) -> int | None:
    if value is None:
        return None
    ms = (value - _EPOCH) // timedelta(milliseconds=1)
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValidationFailed(f"{field}: must be between 1970 and 2286", field=field)
    return ms


def _new_item(body: QueueItemIn, where: str) -> NewItem:
    check_json_value(body.data, f"{where}data")
    return NewItem(
        id=new_id(),
        data=body.data,
        priority=body.priority,
        reference=body.reference,
        deadline=_ms(body.deadline, f"{where}deadline"),
        defer_until=_ms(body.defer_until, f"{where}defer_until"),
    )


def _with_index(exc: ValidationFailed) -> ValidationFailed:
    """A bulk item's error also names the item's index (``index``), so a client can point at it."""
    match = _ITEM_INDEX.match(str(exc.details.get("field") or ""))
    if match is None:
        return exc
    return ValidationFailed(exc.message, **exc.details, index=int(match.group("index")))


def _duplicates_within(items: list[NewItem], bulk: bool) -> None:
    """Two items of one request with the same reference, on a queue where references are unique: a 409."""
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.reference is None:
            continue
        if item.reference in seen:
            raise _duplicate(item.reference, index if bulk else None, f"items[{seen[item.reference]}] of this request")
        seen[item.reference] = index


def _duplicate(reference: str, index: int | None, holder: str) -> Conflict:
    details: dict[str, Any] = {"reference": reference, "existing": holder}
    where = ""
    if index is not None:
        details["index"] = index
        details["field"] = f"items[{index}].reference"
        where = f"items[{index}]: "
    else:
        details["field"] = "reference"
    return Conflict(f"{where}reference {reference!r} is already in this queue (held by {holder})", **details)


async def _add(ctx: ApiContext, tenant: TenantState, queue_id: str, items: list[NewItem], bulk: bool) -> int:
    """Add ``items`` all or nothing; returns the time they were added.

    An add refused because the queue's ``unique_reference`` changed meanwhile is decided again."""

    async def attempt() -> int | Moved:
        queue = await owned_queue(ctx, tenant, queue_id)
        if queue.unique_reference:
            _duplicates_within(items, bulk)
        now = now_ms()
        outcome = await ctx.committer.commit(
            add_unit(p=tenant.partition, tenant_id=tenant.id, queue=queue, items=items, now_ms=now)
        )
        match outcome:
            case Applied():
                return now
            case Refused(label=label, actual=actual) if label.startswith(DUPLICATE_REFERENCE_GUARD):
                index = int(label.rpartition(":")[2])
                raise _duplicate(items[index].reference or "", index if bulk else None, f"item {actual}")
            case _:
                return moved_or_gone(queue_id, outcome)

    return await optimistically(attempt, exhausted=queue_busy())


# --- commands ------------------------------------------------------------------------------------------------


async def add_item(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue_id = request.path_params["id"]
    await owned_queue(ctx, tenant, queue_id)  # an unknown queue is a 404, whatever the body
    body = await read_json(request, QueueItemIn)
    item = _new_item(body, "")
    now = await _add(ctx, tenant, queue_id, [item], bulk=False)
    return responses.json(item_view(item.id, new_snapshot(queue_id, item, now), item.data), 201)


async def add_items(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue_id = request.path_params["id"]
    await owned_queue(ctx, tenant, queue_id)
    try:
        body = await read_json(request, QueueItemsBulkIn)
        items = [_new_item(item, f"items[{i}].") for i, item in enumerate(body.items)]
    except ValidationFailed as exc:
        raise _with_index(exc) from None
    await _add(ctx, tenant, queue_id, items, bulk=True)
    return responses.json(QueueItemsAdded(count=len(items), ids=[i.id for i in items]), 201)


async def _claimer(ctx: ApiContext, tenant: TenantState, body: ClaimIn) -> str:
    """``processed_by``: the robot the body names, else the id of the API key that made the call."""
    if body.robot is not None:
        return body.robot
    return text(await ctx.redis.hget(keys.tenant(tenant.partition, tenant.id), "key_id")) or "api"


async def _abandon_lazily(request: Request, ctx: ApiContext, p: int, now: int) -> None:
    """Before a claim, items of the partition in progress past their time are abandoned (their retries become
    claimable). At most once a second per partition and API process: times are in minutes, and it saves every
    claim a round trip. The trigger service also sweeps, for queues nobody claims from."""
    swept: dict[int, int] | None = getattr(request.app.state, "queues_swept", None)
    if swept is None:
        swept = request.app.state.queues_swept = {}
    if now - swept.get(p, 0) >= LAZY_SWEEP_MS:
        swept[p] = now
        await abandon_due(ctx.redis, ctx.committer, p, now)


async def claim_next(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue = await owned_queue(ctx, tenant, request.path_params["id"])
    body = await read_json(request, ClaimIn, empty=ClaimIn())
    claimer = await _claimer(ctx, tenant, body)
    now = now_ms()
    await _abandon_lazily(request, ctx, tenant.partition, now)
    outcome = await ctx.committer.commit(claim_unit(p=tenant.partition, queue=queue, claimer=claimer, now_ms=now))
    if isinstance(outcome, Refused):
        raise NotFound(f"queue {queue.id} not found")
    item_id = claimed_id(outcome)
    if item_id is None:
        return responses.no_content()
    item = await read_item(ctx.redis, tenant.partition, item_id)
    if item is None:  # pragma: no cover - the claim just set it
        raise NotFound(f"item {item_id} not found")
    return responses.json(item_view(item.id, item.snapshot, item.data()))


async def _owned_item(ctx: ApiContext, tenant: TenantState, queue: QueueState, item_id: str) -> ItemState:
    item = None
    if len(item_id) <= MAX_ID_LENGTH:
        item = await read_item(ctx.redis, tenant.partition, item_id)
    if item is None or item.tenant_id != tenant.id or item.queue_id != queue.id:
        raise NotFound(f"item {item_id} not found in queue {queue.id}")
    return item


def _check_update(body: QueueItemUpdateIn) -> None:
    if body.status != "failed" and body.error is not None:
        raise ValidationFailed("error: only with status failed", field="error")
    if body.status == "in_progress" and body.result is not None:
        raise ValidationFailed("result: only with status completed", field="result")
    if body.status == "in_progress" and body.progress is None:
        raise ValidationFailed("progress: required to update an item in progress", field="progress")
    check_json_value(body.result, "result")


async def update_item(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue = await owned_queue(ctx, tenant, request.path_params["id"])
    item = await _owned_item(ctx, tenant, queue, request.path_params["item_id"])
    body = await read_json(request, QueueItemUpdateIn)
    _check_update(body)
    if item.status != IN_PROGRESS:
        raise Conflict(f"item is {item.status}: only an item in progress can be updated", status=item.status)
    data = item.data()
    now = now_ms()
    p = tenant.partition
    match body.status:
        case "completed":
            change = completed(p=p, item=item, result=body.result, now_ms=now)
        case "failed":
            error = body.error
            change = failed(p=p, item=item, queue=queue, kind=error.kind if error else "application",
                            message=error.message if error else "", now_ms=now)
        case _:
            change = noted(p=p, item=item, note=body.progress or "", now_ms=now)
    if not isinstance(await ctx.committer.commit(change.unit), Applied):
        # Finished or abandoned between our read and the commit.
        current = await read_item(ctx.redis, p, item.id)
        status = current.status if current is not None else "unknown"
        raise Conflict(f"item is {status}: only an item in progress can be updated", status=status)
    return responses.json(item_view(item.id, change.item, data, body.result if body.status == "completed" else None))


# --- queries -------------------------------------------------------------------------------------------------


async def list_items(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue = await owned_queue(ctx, tenant, request.path_params["id"])
    page = page_request(request)
    c = queue_items.c
    query = _item_query().where(c.queue_id == queue.id, c.tenant_id == tenant.id)
    status = request.query_params.get("status")
    if status:
        query = query.where(c.status == one_of("status", status, STATUSES))
    reference = request.query_params.get("reference")
    if reference:
        if len(reference) > 200:
            raise ValidationFailed("reference: at most 200 characters", field="reference")
        query = query.where(c.reference == reference)
    items, cursor = await keyset_page(ctx.engine, query, page, c.created_at, c.id)
    return responses.json(QueueItemPage(items=[QueueItem(**_row_fields(r)) for r in items], next_cursor=cursor))


async def get_item(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    queue = await owned_queue(ctx, tenant, request.path_params["id"])
    item_id = request.path_params["item_id"]
    c = queue_items.c
    h = queue_item_history.c
    async with ctx.engine.connect() as conn:
        row = (await conn.execute(
            _item_query().where(c.id == item_id, c.queue_id == queue.id, c.tenant_id == tenant.id)
        )).first()
        if row is None:
            raise NotFound(f"item {item_id} not found in queue {queue.id}")
        history = (await conn.execute(
            select(queue_item_history).where(h.item_id == item_id, h.tenant_id == tenant.id)
        )).all()
    changes = [
        QueueItemChange(event=r.type, status=r.status, at=iso(r.ts), processed_by=r.processed_by, detail=r.detail,
                        execution_id=r.execution_id)
        for r in sorted(history, key=lambda r: stream_id_parts(r.event_id))  # log order (ids sort as numbers)
    ]
    return responses.json(QueueItemDetail(**_row_fields(row), history=changes,
                                          executions=_executions(changes, row.execution_id)))


def _executions(changes: list[QueueItemChange], current: str | None) -> list[str]:
    """Every execution that processed the item, in order; the item's own (``current``) too, for history rows
    projected before they named their execution."""
    ids = [c.execution_id for c in changes if c.execution_id is not None]
    return list(dict.fromkeys([*ids, *([current] if current is not None else [])]))


routes = [
    Route("/api/queues/{id}/items", add_item, methods=["POST"]),
    Route("/api/queues/{id}/items", list_items, methods=["GET"]),
    Route("/api/queues/{id}/items/bulk", add_items, methods=["POST"]),
    Route("/api/queues/{id}/items/next", claim_next, methods=["POST"]),
    Route("/api/queues/{id}/items/{item_id}", get_item, methods=["GET"]),
    Route("/api/queues/{id}/items/{item_id}", update_item, methods=["PUT"]),
]
