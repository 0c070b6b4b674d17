"""Event histories for projection tests: valid lifecycles of several executions, interleaved.

One generator, two sources of choices: hypothesis (``histories()``) for property tests, and a seeded
``random.Random`` (``random_history``) for scenarios and benchmarks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import msgspec
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain import commit_script
from shared.infra.clock import stream_id_parts
from shared.log import keys
from shared.log.commit import Applied, Unit
from shared.log.consumer import records_of
from shared.log.events import (
    Event,
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionDlqPurged,
    ExecutionFailed,
    ExecutionLog,
    ExecutionPriorityChanged,
    ExecutionProgress,
    ExecutionQueued,
    ExecutionRecovered,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    TenantCreated,
    TenantPlanChanged,
    WorkflowDeleted,
    WorkflowSaved,
    decode,
    outline,
)
from shared.log.workflows import RetryPolicy, StepDef, WorkflowDef
from shared.readmodel import schema
from shared.readmodel.projection import PRIMARY_KEYS, Projection, key_of

T = TypeVar("T")
# 2026-01-31T23:59:59.000Z: histories starting here cross a month boundary (usage_monthly splits).
MONTH_END_MS = 1_769_903_999_000
MID_MONTH_MS = 1_768_000_000_000

Snapshot = dict[str, list[dict[str, Any]]]


class Chooser(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...
    def integer(self, lo: int, hi: int) -> int: ...
    def chance(self, p: float) -> bool: ...
    def json(self) -> Any: ...


class RandomChooser:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def json(self) -> Any:
        return self.rng.choice(
            [None, 1, "ok", {"status": 200, "body": "x" * self.rng.randint(0, 40)}, [1, 2.5, "a"], {"n": {"m": [True]}}]
        )


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


class DrawChooser:
    """Choices drawn by hypothesis (so failures shrink)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))  # type: ignore[no-any-return]

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))  # type: ignore[no-any-return]

    def chance(self, p: float) -> bool:
        return self.draw(st.integers(0, 99)) < int(p * 100)  # type: ignore[no-any-return]

    def json(self) -> Any:
        return self.draw(_json)


def definition(name: str, steps: int, attempts: int = 3) -> WorkflowDef:
    return WorkflowDef(
        name=name,
        steps=[
            StepDef(action=("noop", "log", "set")[i % 3], label=f"step {i}" if i % 2 else None) for i in range(steps)
        ],
        retry=RetryPolicy(attempts=attempts),
    )


def _ev(cls: type[EventBase], tenant: str, aggregate: str, **fields: Any) -> EventBase:
    return cls(tenant_id=tenant, aggregate_id=aggregate, ts=0, **fields)


def lifecycle(c: Chooser, tenant: str, workflow_id: str, wf: WorkflowDef, execution_id: str) -> list[EventBase]:
    """The events of one execution, from queued to an end (completed, cancelled, failed and maybe requeued)."""
    e = execution_id
    priority = c.integer(1, 10)
    out: list[EventBase] = [
        _ev(ExecutionQueued, tenant, e, workflow_id=workflow_id, workflow_version=1, steps=outline(wf),
            params={"n": c.integer(0, 9), "v": c.json()}, priority=priority,
            trigger_type=c.choice(["api", "schedule", "webhook"]))
    ]
    if c.chance(0.2):
        new = c.integer(1, 10)
        out.append(_ev(ExecutionPriorityChanged, tenant, e, priority=new, previous=priority))
        priority = new
    if c.chance(0.1):
        out.append(_ev(ExecutionCancelled, tenant, e))
        return out
    for series in range(2):
        if _attempt_series(c, out, tenant, e, wf):
            return out
        ending = c.choice(["stay", "purge", "requeue"] if series == 0 else ["stay", "purge"])
        if ending == "purge":
            out.append(_ev(ExecutionDlqPurged, tenant, e))
        if ending != "requeue":
            return out
        out.append(_ev(ExecutionRequeued, tenant, e, reason="dlq_retry", priority=c.integer(1, 10)))
    return out


def _attempt_series(c: Chooser, out: list[EventBase], tenant: str, e: str, wf: WorkflowDef) -> bool:
    """Attempts until success or the last failure; True when the execution ended without dead-lettering."""
    attempts = wf.retry.attempts
    start = 0
    crashes = 0
    for attempt in range(1, attempts + 1):
        out.append(_ev(ExecutionStarted, tenant, e, attempt=attempt, executor=f"x{c.integer(1, 3)}", from_step=start))
        if c.chance(0.1):
            crashes += 1
            if crashes > 2:
                out.append(_ev(ExecutionDeadLettered, tenant, e, reason="poison", error="crashed"))
                return False
            out.append(_ev(ExecutionRecovered, tenant, e, crash_count=crashes, lost_executor="x0", executor="x9"))
        failed_at = _steps(c, out, tenant, e, wf, start, attempt)
        if failed_at == -2:
            return True  # cancelled while running
        if failed_at == -1:
            out.append(_ev(ExecutionCompleted, tenant, e, result=c.json(), duration_ms=c.integer(0, 50)))
            return True
        if attempt < attempts:
            out.append(_ev(ExecutionRetrying, tenant, e, failed_attempt=attempt, next_attempt=attempt + 1,
                           delay_ms=10, error=f"boom {attempt}"))
            start = failed_at
    out.append(_ev(ExecutionFailed, tenant, e, error="gave up", attempt=attempts, dead_lettered=True))
    out.append(_ev(ExecutionDeadLettered, tenant, e, error="gave up"))
    return False


def _steps(c: Chooser, out: list[EventBase], tenant: str, e: str, wf: WorkflowDef, start: int, attempt: int) -> int:
    """Run steps from ``start``: -1 all done, -2 cancelled, else the index of the step that failed."""
    for i in range(start, len(wf.steps)):
        step = wf.steps[i]
        out.append(_ev(StepStarted, tenant, e, step_index=i, action=step.action, label=step.label, attempt=attempt))
        if c.chance(0.3):
            out.append(_ev(ExecutionLog, tenant, e, step_index=i, message=f"log {i}", level=c.choice(["info", "warn"])))
        outcome = c.choice(["ok", "ok", "ok", "fail", "continue", "cancel"])
        if outcome == "cancel":
            out.append(_ev(ExecutionCancelled, tenant, e))
            return -2
        if outcome == "ok":
            out.append(_ev(StepCompleted, tenant, e, step_index=i, output=c.json(), duration_ms=c.integer(0, 30)))
        else:
            out.append(_ev(StepFailed, tenant, e, step_index=i, error=f"step {i} failed", duration_ms=3,
                           attempt=attempt, continued=outcome == "continue"))
            if outcome == "fail":
                return i
        out.append(_ev(ExecutionProgress, tenant, e, step_index=i, percent=100.0 * (i + 1) / len(wf.steps)))
    return -1


def history(c: Chooser, *, tenants: int, executions: int, start_ms: int, prefix: str = "") -> list[EventBase]:
    """Tenants and workflows first, then the executions' lifecycles interleaved; ``ts`` increasing."""
    setup: list[EventBase] = []
    lanes: list[list[EventBase]] = []
    workflows: list[tuple[str, str, WorkflowDef]] = []
    for t in range(tenants):
        tenant = f"{prefix}tenant{t:02d}".ljust(32, "0")
        setup.append(_ev(TenantCreated, tenant, tenant, name=f"Tenant {t}", plan="pro", api_key_id=f"{tenant[:28]}key0",
                         api_key_hash=hashlib.sha256(tenant.encode()).hexdigest(), api_key_prefix=f"orq_{tenant[:8]}"))
        wf_id = f"{prefix}wf{t:02d}".ljust(32, "0")
        wf = definition(f"flow {t}", c.integer(1, 4), attempts=c.integer(1, 3))
        setup.append(_ev(WorkflowSaved, tenant, wf_id, version=1, definition=wf))
        workflows.append((tenant, wf_id, wf))
        admin: list[EventBase] = []
        if c.chance(0.5):
            admin.append(_ev(TenantPlanChanged, tenant, tenant, plan="enterprise"))
        if c.chance(0.5):
            admin.append(_ev(WorkflowSaved, tenant, wf_id, version=2, definition=definition(f"flow {t} v2", 2)))
        if c.chance(0.3):
            admin.append(_ev(WorkflowDeleted, tenant, wf_id))
        lanes.append(admin)
    for x in range(executions):
        tenant, wf_id, wf = c.choice(workflows)
        lanes.append(lifecycle(c, tenant, wf_id, wf, f"{prefix}exec{x:05d}".ljust(32, "0")))
    events = list(setup)
    while any(lanes):
        lane = c.choice([lane for lane in lanes if lane])
        events.append(lane.pop(0))
    return [msgspec.structs.replace(ev, ts=start_ms + 3 * i) for i, ev in enumerate(events)]


def with_ids(events: Sequence[EventBase]) -> list[EventBase]:
    """Give events stream-like ids (as if all were in one partition), increasing in order."""
    return [msgspec.structs.replace(ev, id=f"{ev.ts}-{i}") for i, ev in enumerate(events)]


@st.composite
def histories(draw: st.DrawFn, max_executions: int = 6) -> list[EventBase]:
    c = DrawChooser(draw)
    start = draw(st.sampled_from([MID_MONTH_MS, MONTH_END_MS - 40]))
    return with_ids(history(c, tenants=c.integer(1, 2), executions=c.integer(1, max_executions), start_ms=start))


def random_history(seed: int, *, tenants: int = 3, executions: int = 30, start_ms: int = MONTH_END_MS - 500,
                   prefix: str = "") -> list[EventBase]:
    return history(RandomChooser(seed), tenants=tenants, executions=executions, start_ms=start_ms, prefix=prefix)


# --- Redis and SQL ----------------------------------------------------------------------------------------------


async def append(redis: Redis, events: Sequence[EventBase], partitions: int, chunk: int = 2000) -> None:
    """Append ``events`` to their partitions' logs through the real commit path, in order."""
    committer = commit_script.committer(redis)
    try:
        for i in range(0, len(events), chunk):
            units = [Unit(keys.partition_of(ev.tenant_id, partitions)).event(ev) for ev in events[i : i + chunk]]
            outcomes = await committer.commit_all(units)
            assert all(isinstance(o, Applied) for o in outcomes), outcomes
    finally:
        await committer.close()


async def stream_events(redis: Redis, partitions: int) -> list[Event]:
    """Every event of every partition's log, decoded with its stream id."""
    out: list[Event] = []
    for p in range(partitions):
        for record in records_of(await redis.xrange(keys.log(p))):
            out.append(decode(record.body, record.id))
    return out


def fold(events: Sequence[EventBase]) -> Snapshot:
    """Rows of one in-memory fold of ``events``, as :func:`snapshot` lays them out."""
    projection = Projection()
    for ev in events:
        projection.apply(ev)
    return {table: [rows[k] for k in sorted(rows, key=_sortable)] for table, rows in projection.rows.items()}


async def snapshot(engine: AsyncEngine) -> Snapshot:
    """Every row of every projection table, sorted by primary key."""
    out: Snapshot = {}
    async with engine.connect() as conn:
        for table in schema.PROJECTION_TABLES:
            rows = [dict(r) for r in (await conn.execute(select(table))).mappings().all()]
            out[table.name] = sorted(rows, key=lambda r, t=table.name: _sortable(key_of(t, r)))  # type: ignore[misc]
    assert set(out) == set(PRIMARY_KEYS)
    return out


def _sortable(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def stream_id_key(stream_id: str) -> tuple[int, int]:
    return stream_id_parts(stream_id)
