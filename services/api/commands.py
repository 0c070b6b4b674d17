"""Commands on one execution: cancel, retry (plain or from the DLQ), change priority, purge from the DLQ.

Each reads the execution's Redis state, decides on what it saw, and commits a unit guarded on that status.
A unit refused because the execution moved on meanwhile is decided again on the new state, a bounded
number of times; a command the new state does not allow is a 409 naming the status.

An ended execution's Redis state is dropped ``ORQ_STATE_RETENTION_S`` after its ending was projected: then
the SQL row answers instead (a 409 naming its status), and a retry rebuilds the state from SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import msgspec
from sqlalchemy import select

from services.api.context import ApiContext
from services.api.ownership import MAX_ID_LENGTH
from services.api.priority import check_priority
from services.api.schemas import CommandAccepted
from shared.domain.aggregates import FINISHED, Status, TenantState
from shared.domain.executions.commands import cancel_unit, dlq_purge_unit, priority_unit, requeue_unit, restored_state
from shared.domain.executions.state import ExecutionState, read_execution
from shared.domain.queues.claims import rerun_item, rerunnable
from shared.domain.queues.definitions import read_queue
from shared.domain.queues.items import read_item
from shared.infra.clock import now_ms
from shared.infra.errors import Conflict, NotFound
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.log import keys
from shared.log.commit import Applied, Unit
from shared.log.events import ExecutionDlqPurged
from shared.log.redis import text
from shared.readmodel.schema import execution_steps, executions, queue_item_data, queue_items
from shared.service import metrics

RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})
# A DLQ entry is added by the executor's dead-letter commit at Redis' time; SQL's dead_lettered_at is the
# executor's clock. The entry is looked for this far either side (clock skew), a page at a time.
DLQ_WINDOW_MS = 10 * 60 * 1000
DLQ_PAGE = 200

State = ExecutionState
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Retired:
    """An execution of the tenant whose Redis state retention dropped: its SQL row is what is left."""

    __slots__ = ("row",)

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row

    @property
    def status(self) -> str:
        return str(self.row["status"])


async def lookup(ctx: ApiContext, tenant: TenantState, execution_id: str) -> State | Retired:
    """The execution's Redis state if it belongs to the tenant; else its SQL row if SQL knows it (its state
    was dropped after it ended); otherwise (unknown, another tenant's) a 404."""
    if len(execution_id) > MAX_ID_LENGTH:
        raise NotFound(f"execution {execution_id} not found")
    state = await read_execution(ctx.redis, tenant.partition, execution_id)
    if state:
        if state.tenant != tenant.id:
            raise NotFound(f"execution {execution_id} not found")
        return state
    async with ctx.engine.connect() as conn:
        c = executions.c
        row = (await conn.execute(select(executions).where(c.id == execution_id, c.tenant_id == tenant.id))).first()
    if row is None:
        raise NotFound(f"execution {execution_id} not found")
    return Retired(dict(row._mapping))


async def owned_execution(ctx: ApiContext, tenant: TenantState, execution_id: str) -> State:
    """The execution's state if it belongs to the tenant and has one; one whose state was dropped after it
    ended is a 409 naming its status (as its state would have said); unknown or another tenant's, a 404."""
    found = await lookup(ctx, tenant, execution_id)
    if isinstance(found, Retired):
        raise Conflict(f"execution is {found.status}", status=found.status)
    return found


def status_of(state: State) -> Status:
    return parsed_status(state.status.value if state.status else "")


def parsed_status(raw: str) -> Status:
    """A status as Redis or SQL holds it; anything else is a 409 naming it."""
    try:
        return Status(raw)
    except ValueError:
        raise Conflict(f"execution is {raw or 'in an unknown state'}", status=raw) from None


def conflict(status: Status) -> Conflict:
    return Conflict(f"execution is {status.value}", status=status.value)




async def cancel(ctx: ApiContext, tenant: TenantState, execution_id: str) -> CommandAccepted:
    """Queued or retrying: taken off its work stream. Running: stopped before its next step."""

    async def attempt() -> CommandAccepted | Moved:
        state = await owned_execution(ctx, tenant, execution_id)
        status = status_of(state)
        if status in FINISHED:
            raise conflict(status)
        unit = cancel_unit(
            p=tenant.partition, tenant_id=tenant.id, execution_id=execution_id, observed=status, now_ms=now_ms()
        )
        if isinstance(await ctx.committer.commit(unit), Applied):
            metrics.observe(unit)
            return CommandAccepted(execution_id=execution_id, status=Status.CANCELLED.value, priority=state.priority)
        return MOVED

    async def still_moving() -> CommandAccepted:  # a 409 naming the status it kept moving to
        raise conflict(status_of(await owned_execution(ctx, tenant, execution_id)))

    return await optimistically(attempt, exhausted=still_moving)


async def retry(ctx: ApiContext, tenant: TenantState, execution_id: str, *, from_dlq: bool | None) -> CommandAccepted:
    """A new series of attempts for a failed or cancelled execution.

    ``from_dlq=True`` (the DLQ endpoint) needs the execution to be in the DLQ (else 404); ``None`` takes it
    out of the DLQ if it is there. A queue item's run takes its item back in the same unit (docs/queues.md).
    """

    async def attempt() -> CommandAccepted | Moved:
        found = await lookup(ctx, tenant, execution_id)
        if isinstance(found, Retired):
            row = found.row
            in_dlq, status, priority = bool(row["in_dlq"]), parsed_status(found.status), int(row["priority"])
        else:
            in_dlq, status, priority = found.dead_lettered, status_of(found), found.priority
        if from_dlq and not in_dlq:
            raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
        if status not in RETRYABLE:
            raise conflict(status)
        ts = now_ms()
        restore = await _restore(ctx, tenant, found, ts) if isinstance(found, Retired) else None
        unit = requeue_unit(
            p=tenant.partition,
            tenant_id=tenant.id,
            execution_id=execution_id,
            observed=status,
            priority=priority,
            from_dlq=in_dlq,
            now_ms=ts,
            restore=restore,
        )
        trigger_type = found.row["trigger_type"] if isinstance(found, Retired) else found.trigger_type
        if trigger_type == "queue_item":
            await _take_item_back(ctx, tenant, execution_id, unit, ts)
        if isinstance(await ctx.committer.commit(unit), Applied):
            return CommandAccepted(execution_id=execution_id, status=Status.QUEUED.value, priority=priority)
        return MOVED

    return await optimistically(attempt, exhausted=Conflict("execution is changing concurrently, try again"))


async def _take_item_back(ctx: ApiContext, tenant: TenantState, execution_id: str, unit: Unit, ts: int) -> None:
    """A retried queue-item run whose end its item already followed: the item is in progress again with it
    (in the retry's unit), and follows its next end. A run whose end the trigger service has not handled yet
    still has its item waiting for it: nothing to add."""
    p = tenant.partition
    if await ctx.redis.hexists(keys.trigger_runs(p), execution_id):
        return
    c = queue_items.c
    async with ctx.engine.connect() as conn:
        row = (await conn.execute(
            select(c.id, queue_item_data.c.data)
            .outerjoin(queue_item_data, queue_item_data.c.item_id == c.id)
            .where(c.execution_id == execution_id, c.tenant_id == tenant.id)
        )).first()
    item = await read_item(ctx.redis, p, row.id) if row is not None else None
    queue = await read_queue(ctx.redis, p, item.queue_id) if item is not None else None
    if row is None or item is None or queue is None or not rerunnable(item, execution_id):
        return
    rerun_item(unit, item=item, queue=queue, execution_id=execution_id, now_ms=ts,
               data_json=msgspec.json.encode(row.data if row.data is not None else {}))


async def _restore(ctx: ApiContext, tenant: TenantState, found: Retired, ts: int) -> dict[str, Any]:
    """The state of a retired execution rebuilt from SQL: its steps' rows, its pinned definition's
    ``retry_from``, and its DLQ entry (found by time: the id recorded in the dropped hash is gone)."""
    row, p = found.row, tenant.partition
    async with ctx.engine.connect() as conn:
        steps = (await conn.execute(
            select(execution_steps).where(execution_steps.c.execution_id == row["id"],
                                          execution_steps.c.tenant_id == tenant.id))).all()
    definition = await ctx.definitions.read(ctx.redis, p, row["workflow_id"], int(row["workflow_version"]))
    dlq_id = ""
    if row["in_dlq"]:
        dlq_id = await dlq_entry(ctx, p, str(row["id"]), int(row["dead_lettered_at"] or row["completed_at"] or ts))
    return restored_state(p=p, row=row, steps=[dict(s._mapping) for s in steps], dlq_id=dlq_id, fence=ts,
                          retry_from_start=definition is not None and definition.retry_from == "start")


async def dlq_entry(ctx: ApiContext, p: int, execution_id: str, around_ms: int) -> str:
    """The id of the execution's entry in the partition's DLQ stream near ``around_ms``; "" if none (purged)."""
    start, end = str(max(0, around_ms - DLQ_WINDOW_MS)), str(around_ms + DLQ_WINDOW_MS)
    while True:
        entries = cast(Entries, await ctx.redis.xrange(keys.dlq(p), start, end, count=DLQ_PAGE))
        for raw_id, fields in entries:
            if text(fields.get(b"e")) == execution_id:
                return text(raw_id)
        if len(entries) < DLQ_PAGE:
            return ""
        start = f"({text(entries[-1][0])}"


async def change_priority(ctx: ApiContext, tenant: TenantState, execution_id: str, priority: int) -> CommandAccepted:
    """Move a queued (not yet delivered) execution to another priority level."""
    check_priority(priority, ctx.plan(tenant.plan), "priority")
    accepted = CommandAccepted(execution_id=execution_id, status=Status.QUEUED.value, priority=priority)

    async def attempt() -> CommandAccepted | Moved:
        state = await owned_execution(ctx, tenant, execution_id)
        status = status_of(state)
        if status is not Status.QUEUED:
            raise conflict(status)
        if state.work_id:
            raise Conflict("execution is being started: its priority can no longer change", status="starting")
        previous = state.priority
        if previous == priority:
            return accepted  # already there: nothing to append
        unit = priority_unit(
            p=tenant.partition,
            tenant_id=tenant.id,
            execution_id=execution_id,
            previous=previous,
            priority=priority,
            now_ms=now_ms(),
        )
        return accepted if isinstance(await ctx.committer.commit(unit), Applied) else MOVED

    return await optimistically(attempt, exhausted=Conflict("execution is changing concurrently, try again"))


async def purge(ctx: ApiContext, tenant: TenantState, execution_id: str) -> None:
    """Remove a dead-lettered execution from the DLQ (it stays failed in the history)."""
    found = await lookup(ctx, tenant, execution_id)
    if isinstance(found, Retired):
        await _purge_retired(ctx, tenant, found)
        return
    if not found.dead_lettered:
        raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
    unit = dlq_purge_unit(p=tenant.partition, tenant_id=tenant.id, execution_id=execution_id, now_ms=now_ms())
    if not isinstance(await ctx.committer.commit(unit), Applied):
        raise NotFound(f"execution {execution_id} is not in the dead-letter queue")


async def _purge_retired(ctx: ApiContext, tenant: TenantState, found: Retired) -> None:
    """Purge one whose state was dropped: the event (only while its state stays absent), then its DLQ entry.
    The entry goes after the event: a crash in between leaves an entry no state points at, which the DLQ cap
    of ``orq maintenance`` drops."""
    execution_id, p, ts = str(found.row["id"]), tenant.partition, now_ms()
    if not found.row["in_dlq"]:
        raise NotFound(f"execution {execution_id} is not in the dead-letter queue")
    unit = Unit(p).require_absent(keys.execution(p, execution_id), "status")
    unit.event(ExecutionDlqPurged(tenant_id=tenant.id, aggregate_id=execution_id, ts=ts))
    if not isinstance(await ctx.committer.commit(unit), Applied):
        raise Conflict("execution is changing concurrently, try again")
    around = int(found.row["dead_lettered_at"] or found.row["completed_at"] or ts)
    if entry := await dlq_entry(ctx, p, execution_id, around):
        await ctx.redis.xdel(keys.dlq(p), entry)
