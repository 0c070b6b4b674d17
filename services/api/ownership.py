"""What a tenant may address: its own live resources. Anything else answers 404, never 403, so ids leak nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Row, Table, false, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain.aggregates import TenantState
from shared.infra.errors import NotFound

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
