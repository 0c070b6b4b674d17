"""Commands on one execution: cancel, retry (plain or from the DLQ), change priority, purge from the DLQ.

Each reads the execution's Redis state, decides on what it saw, and commits a unit guarded on that status.
A unit refused because the execution moved on meanwhile is decided again on the new state, a bounded
number of times; a command the new state does not allow is a 409 naming the status.
"""

from __future__ import annotations

from services.api.context import ApiContext
from services.api.ownership import MAX_ID_LENGTH
from services.api.priority import check_priority
from services.api.schemas import CommandAccepted
from shared.clock import now_ms
from shared.commit import Applied
from shared.control import cancel_unit, dlq_purge_unit, priority_unit, requeue_unit
from shared.errors import Conflict, NotFound
from shared.redis import text
from shared.state import FINISHED, Status, TenantState, read_execution

ATTEMPTS = 3
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})

State = dict[str, bytes]


async def owned_execution(ctx: ApiContext, tenant: TenantState, execution_id: str) -> State:
    """The execution's state if it belongs to the tenant; otherwise (unknown, another tenant's) a 404."""
    state: State = {}
    if len(execution_id) <= MAX_ID_LENGTH:
        state = await read_execution(ctx.redis, tenant.partition, execution_id)
    if not state or text(state.get("tenant")) != tenant.id:
        raise NotFound(f"execution {execution_id} not found")
    return state


def status_of(state: State) -> Status:
    raw = text(state.get("status"))
    try:
        return Status(raw)
    except ValueError:
        raise Conflict(f"execution is {raw or 'in an unknown state'}", status=raw) from None


def conflict(status: Status) -> Conflict:
    return Conflict(f"execution is {status.value}", status=status.value)


def _priority(state: State) -> int:
    return int(text(state.get("priority")) or 5)


async def cancel(ctx: ApiContext, tenant: TenantState, execution_id: str) -> CommandAccepted:
    """Queued or retrying: taken off its work stream. Running: stopped before its next step."""
    for _ in range(ATTEMPTS):
        state = await owned_execution(ctx, tenant, execution_id)
        status = status_of(state)
        if status in FINISHED:
            raise conflict(status)
        unit = cancel_unit(
            p=tenant.partition, tenant_id=tenant.id, execution_id=execution_id, observed=status, now_ms=now_ms()
        )
        if isinstance(await ctx.committer.commit(unit), Applied):
            return CommandAccepted(execution_id=execution_id, status=Status.CANCELLED.value, priority=_priority(state))
    raise conflict(status_of(await owned_execution(ctx, tenant, execution_id)))


async def retry(ctx: ApiContext, tenant: TenantState, execution_id: str, *, from_dlq: bool | None) -> CommandAccepted:
    """A new series of attempts for a failed or cancelled execution.

    ``from_dlq=True`` (the DLQ endpoint) needs the execution to be in the DLQ (else 404); ``None`` takes it
    out of the DLQ if it is there.
    """
    for _ in range(ATTEMPTS):
        state = await owned_execution(ctx, tenant, execution_id)
        in_dlq = text(state.get("dead_lettered")) == "1"
        if from_dlq and not in_dlq:
            raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
        status = status_of(state)
        if status not in RETRYABLE:
            raise conflict(status)
        priority = _priority(state)
        unit = requeue_unit(
            p=tenant.partition,
            tenant_id=tenant.id,
            execution_id=execution_id,
            observed=status,
            priority=priority,
            from_dlq=in_dlq,
            now_ms=now_ms(),
        )
        if isinstance(await ctx.committer.commit(unit), Applied):
            return CommandAccepted(execution_id=execution_id, status=Status.QUEUED.value, priority=priority)
    raise Conflict("execution is changing concurrently, try again")


async def change_priority(ctx: ApiContext, tenant: TenantState, execution_id: str, priority: int) -> CommandAccepted:
    """Move a queued (not yet delivered) execution to another priority level."""
    check_priority(priority, ctx.plan(tenant.plan), "priority")
    for _ in range(ATTEMPTS):
        state = await owned_execution(ctx, tenant, execution_id)
        status = status_of(state)
        if status is not Status.QUEUED:
            raise conflict(status)
        if text(state.get("work_id")):
            raise Conflict("execution is being started: its priority can no longer change", status="starting")
        previous = _priority(state)
        if previous == priority:
            break
        unit = priority_unit(
            p=tenant.partition,
            tenant_id=tenant.id,
            execution_id=execution_id,
            previous=previous,
            priority=priority,
            now_ms=now_ms(),
        )
        if isinstance(await ctx.committer.commit(unit), Applied):
            break
    else:
        raise Conflict("execution is changing concurrently, try again")
    return CommandAccepted(execution_id=execution_id, status=Status.QUEUED.value, priority=priority)


async def purge(ctx: ApiContext, tenant: TenantState, execution_id: str) -> None:
    """Remove a dead-lettered execution from the DLQ (it stays failed in the history)."""
    state = await owned_execution(ctx, tenant, execution_id)
    if text(state.get("dead_lettered")) != "1":
        raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
    unit = dlq_purge_unit(p=tenant.partition, tenant_id=tenant.id, execution_id=execution_id, now_ms=now_ms())
    if not isinstance(await ctx.committer.commit(unit), Applied):
        raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
