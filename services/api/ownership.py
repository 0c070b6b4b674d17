"""What a tenant may address: its own live resources. Anything else answers 404, never 403, so ids leak nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Row, Table, false, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from services.api.auth import require_tenant_reading
from services.api.context import ApiContext
from shared.domain.aggregates import TenantState, WorkflowState, read_workflow, workflow_from_hash
from shared.domain.queues.definitions import QueueState, read_queue
from shared.infra.errors import NotFound
from shared.log import keys

MAX_ID_LENGTH = 64  # ids are 32 hex characters; a longer one is unknown without asking Redis


class Owned(Protocol):
    @property
    def tenant_id(self) -> str: ...

    @property
    def deleted(self) -> bool: ...


S = TypeVar("S", bound=Owned)


async def owned(kind: str, resource_id: str, tenant: TenantState, read: Callable[[str], Awaitable[S | None]]) -> S:
    """The tenant's live ``kind`` with this id (read from the aggregate state); anything else is a 404."""
    state = await read(resource_id) if len(resource_id) <= MAX_ID_LENGTH else None
    if state is None or state.tenant_id != tenant.id or state.deleted:
        raise NotFound(f"{kind} {resource_id} not found")
    return state


async def owned_row(engine: AsyncEngine, table: Table, kind: str, row_id: str, tenant: TenantState) -> Row[Any]:
    """The tenant's live (not deleted) row of ``table`` with this id (read from SQL); anything else is a 404."""
    c = table.c
    query = select(table).where(c.id == row_id, c.tenant_id == tenant.id, c.deleted == false())
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"{kind} {row_id} not found")
    return row


async def owned_workflow(ctx: ApiContext, tenant: TenantState, workflow_id: str) -> WorkflowState:
    """The tenant's live workflow; anything else (unknown, deleted, another tenant's) is a 404."""
    return await owned("workflow", workflow_id, tenant, lambda i: read_workflow(ctx.redis, tenant.partition, i))


async def tenant_and_workflow(request: Request, workflow_id: str) -> tuple[TenantState, WorkflowState]:
    """The caller's tenant and its live workflow ``workflow_id``, read in one round trip."""
    # An id too long to exist is not read: owned() answers 404 for it without looking.
    key_of = (lambda p: keys.workflow(p, workflow_id)) if len(workflow_id) <= MAX_ID_LENGTH else None
    tenant, raw = await require_tenant_reading(request, key_of)

    async def already_read(_: str) -> WorkflowState | None:
        return workflow_from_hash(workflow_id, raw)

    return tenant, await owned("workflow", workflow_id, tenant, already_read)


async def owned_queue(ctx: ApiContext, tenant: TenantState, queue_id: str) -> QueueState:
    """The tenant's live queue; anything else (unknown, deleted, another tenant's) is a 404."""
    return await owned("queue", queue_id, tenant, lambda i: read_queue(ctx.redis, tenant.partition, i))
