"""Notifications: list their deliveries (SQL projection) and ask for one to be sent again (a command).

A resend is decided on the notification's Redis hash (the notifier's aggregate state): only a finished one
(``sent`` or ``failed``) can be sent again; it gets a new series of attempts with the same body.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_tenant
from services.api.context import context
from services.api.listing import one_of
from services.api.ownership import MAX_ID_LENGTH
from services.api.pagination import keyset_page, page_request
from services.api.schemas import Notification, NotificationPage, ResendAccepted
from shared.domain.notifications import resend_unit
from shared.infra.clock import iso, now_ms
from shared.infra.errors import Conflict, NotFound
from shared.log import keys
from shared.log.commit import Applied, Refused
from shared.log.redis import text
from shared.readmodel.schema import notifications

STATUSES = ("pending", "retrying", "sent", "failed")


def _view(row: Row[Any]) -> Notification:
    m = row._mapping
    return Notification(
        id=m["id"],
        execution_id=m["execution_id"],
        workflow_id=m["workflow_id"],
        trigger=m["trigger"],
        channel=m["channel"],
        target=m["target"],
        status=m["status"],
        attempts=m["attempts"] or 0,
        last_status_code=m["last_status_code"],
        last_error=m["last_error"],
        created_at=iso(m["created_at"]),
        updated_at=iso(m["updated_at"]),
        delivered_at=iso(m["delivered_at"]),
    )


async def list_notifications(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    page = page_request(request)
    c = notifications.c
    query = select(notifications).where(c.tenant_id == tenant.id)
    execution_id = request.query_params.get("execution_id")
    if execution_id is not None:
        query = query.where(c.execution_id == execution_id[:MAX_ID_LENGTH])
    status = request.query_params.get("status")
    if status is not None:
        query = query.where(c.status == one_of("status", status, STATUSES))
    items, cursor = await keyset_page(ctx.engine, query, page, c.created_at, c.id)
    return responses.json(NotificationPage(items=[_view(r) for r in items], next_cursor=cursor))


async def resend_notification(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    notification_id = request.path_params["id"]
    state: dict[str, str] = {}
    if len(notification_id) <= MAX_ID_LENGTH:
        raw = await ctx.redis.hgetall(keys.notification(tenant.partition, notification_id))
        state = {text(k): text(v) for k, v in raw.items() if text(k) != "payload"}
    if not state or state.get("tenant") != tenant.id:
        raise NotFound(f"notification {notification_id} not found")
    unit = resend_unit(p=tenant.partition, tenant_id=tenant.id, notification=notification_id, state=state,
                       now_ms=now_ms())
    match await ctx.committer.commit(unit):
        case Applied():
            return responses.json(ResendAccepted(id=notification_id, status="pending"), 202)
        case Refused(actual=actual):
            raise Conflict(f"notification is {actual or 'changing'}; only a sent or failed one can be resent",
                           status=actual)
        case _:
            raise Conflict("notification is changing concurrently, try again")


routes = [
    Route("/api/notifications", list_notifications, methods=["GET"]),
    Route("/api/notifications/{id}/resend", resend_notification, methods=["POST"]),
]
