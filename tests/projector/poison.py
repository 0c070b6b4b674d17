"""Poisoned events for quarantine tests: tenants sharing a partition, their runs, and events the projection
cannot take (a value out of the SQL column's range, a body the fold cannot encode, a row the database
refuses)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.log import keys
from shared.log.events import (
    EventBase,
    ExecutionCompleted,
    ExecutionQueued,
    ExecutionStarted,
    StepCompleted,
    StepStarted,
    TenantCreated,
    WorkflowSaved,
    outline,
)
from shared.readmodel import schema
from tests.projector.factories import MID_MONTH_MS, definition

PARTITIONS = 4
# Past BIGINT (signed 64 bits): MariaDB refuses it (strict mode, "Out of range value"), SQLite cannot bind it.
OUT_OF_RANGE = 2**64 - 1
POISON_MARK = "POISON-ROW"


def same_partition_tenants(n: int, partitions: int = PARTITIONS, prefix: str = "t") -> list[str]:
    """``n`` tenant ids (32 chars) that all live in one partition."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        tenant = f"{prefix}{i:04d}".ljust(32, "0")
        if keys.partition_of(tenant, partitions) == 0:
            found.append(tenant)
        i += 1
    return found


def tenant_setup(tenant: str) -> list[EventBase]:
    wf = definition(f"flow of {tenant[:6]}", 2)
    return [
        TenantCreated(tenant_id=tenant, aggregate_id=tenant, ts=0, name=f"T {tenant[:6]}", plan="pro",
                      api_key_id=f"{tenant[:28]}key0", api_key_hash=hashlib.sha256(tenant.encode()).hexdigest(),
                      api_key_prefix=f"orq_{tenant[:8]}"),
        WorkflowSaved(tenant_id=tenant, aggregate_id=workflow_of(tenant), ts=0, version=1, definition=wf),
    ]


def workflow_of(tenant: str) -> str:
    return f"wf{tenant[:30]}"


def run(tenant: str, execution_id: str, output: Any = "ok", duration_ms: int = 5) -> list[EventBase]:
    """One execution of two steps; step 0's ``step.completed`` carries ``output`` and ``duration_ms``."""
    e, wf = execution_id, workflow_of(tenant)
    return [
        ExecutionQueued(tenant_id=tenant, aggregate_id=e, ts=0, workflow_id=wf, workflow_version=1,
                        steps=outline(definition(f"flow of {tenant[:6]}", 2)), params={"n": 1}, priority=5,
                        trigger_type="api"),
        ExecutionStarted(tenant_id=tenant, aggregate_id=e, ts=0, attempt=1, executor="x1"),
        StepStarted(tenant_id=tenant, aggregate_id=e, ts=0, step_index=0, action="noop"),
        StepCompleted(tenant_id=tenant, aggregate_id=e, ts=0, step_index=0, output=output, duration_ms=duration_ms),
        StepStarted(tenant_id=tenant, aggregate_id=e, ts=0, step_index=1, action="log"),
        StepCompleted(tenant_id=tenant, aggregate_id=e, ts=0, step_index=1, output={"n": 2}, duration_ms=3),
        ExecutionCompleted(tenant_id=tenant, aggregate_id=e, ts=0, result={"done": True}, duration_ms=9),
    ]


def exec_id(tenant: str, n: int) -> str:
    return f"x{tenant[:5]}{n:04d}".ljust(32, "0")


def interleave(*lanes: Sequence[EventBase]) -> list[EventBase]:
    """Round-robin over the lanes (each keeps its order), with increasing ``ts``."""
    out: list[EventBase] = []
    queues = [list(lane) for lane in lanes]
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return timed(out)


def timed(events: Sequence[EventBase], start_ms: int = MID_MONTH_MS) -> list[EventBase]:
    return [msgspec.structs.replace(ev, ts=start_ms + 7 * i) for i, ev in enumerate(events)]


def is_poison_step(event: EventBase) -> bool:
    """A step output out of range, holding a msgpack extension value, or marked to be refused."""
    if not isinstance(event, StepCompleted):
        return False
    values = event.output.values() if isinstance(event.output, dict) else [event.output]
    return event.duration_ms == OUT_OF_RANGE or any(isinstance(v, msgspec.msgpack.Ext) or v == POISON_MARK
                                                    for v in values)


# --- the quarantine table, read as a test sees it -----------------------------------------------------------------


async def quarantined(engine: AsyncEngine) -> list[dict[str, Any]]:
    """One dict per quarantined event (its body put together from its pieces), in stream order."""
    table = schema.projection_quarantine
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table).order_by(table.c.partition, table.c.ms, table.c.seq,
                                                          table.c.chunk))).mappings().all()
    out: dict[tuple[int, int, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["partition"], row["ms"], row["seq"])
        if row["chunk"] == 0:
            out[key] = {**row, "body": bytes(row["body"])}
        else:
            out[key]["body"] += bytes(row["body"])
    return list(out.values())


async def archived_ids(engine: AsyncEngine) -> set[tuple[int, str]]:
    table = schema.event_archive
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table.c.partition, table.c.ms, table.c.seq))).all()
    return {(int(p), f"{ms}-{seq}") for p, ms, seq in rows}


# --- a row the database refuses until an operator "fixes" it (drops the trigger) -------------------------------------

_MYSQL_TRIGGER = """
CREATE TRIGGER poison_{when} BEFORE {what} ON execution_steps FOR EACH ROW
IF NEW.output_data LIKE '%{mark}%' THEN
  SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned step output refused';
END IF
"""
_SQLITE_TRIGGER = """
CREATE TRIGGER poison_{when} BEFORE {what} ON execution_steps
WHEN NEW.output_data LIKE '%{mark}%'
BEGIN SELECT RAISE(ABORT, 'poisoned step output refused'); END
"""


async def refuse_poisoned_steps(engine: AsyncEngine) -> None:
    """Triggers that refuse any step row whose output holds ``POISON_MARK`` (a database-side limit)."""
    template = _SQLITE_TRIGGER if engine.dialect.name == "sqlite" else _MYSQL_TRIGGER
    async with engine.begin() as conn:
        for when, what in (("ins", "INSERT"), ("upd", "UPDATE")):
            await conn.exec_driver_sql(template.format(when=when, what=what, mark=POISON_MARK),
                                       execution_options={"no_parameters": True})


async def accept_poisoned_steps(engine: AsyncEngine) -> None:
    """The operator's fix: drop the triggers."""
    async with engine.begin() as conn:
        for when in ("ins", "upd"):
            await conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS poison_{when}")
