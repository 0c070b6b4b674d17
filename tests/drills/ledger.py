"""What the log says happened to each execution, and the promises a user relies on, checked against it.

The promises: every accepted execution reaches exactly one terminal state (and Redis says the same); nothing
of a run happens after its cancel; a step runs again only across a real crash (an ``execution.recovered``
naming an executor that really died sits between the two starts); when everything has ended, the tenant
holds no running slot and no work entry is left pending; the SQL projection equals a fold of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain.aggregates import FINISHED
from shared.log import keys
from shared.log.events import (
    Event,
    ExecutionCancelled,
    ExecutionRecovered,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepStarted,
    type_of,
)
from shared.readmodel import schema
from shared.readmodel.projection import key_of
from tests.executor.seed import PARTITIONS, status
from tests.helpers import assert_eventually
from tests.projector.factories import Snapshot, fold, snapshot, stream_events
from tests.projector.helpers import archived, caught_up

TERMINAL = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
# After a cancel, none of these may appear: the run must not start, run a step or end another way.
AFTER_CANCEL_FORBIDDEN = frozenset({"execution.started", "step.started", "step.completed", "execution.completed",
                                    "execution.failed", "execution.retrying"})

CrashCheck = Callable[[str], bool]


def any_crash(executor: str) -> bool:
    """For drills where any executor may lose its runs (a Redis outage orphans runs of live executors)."""
    return True


def crashed_pids(pids: Iterable[int]) -> CrashCheck:
    """Only executors killed by the drill (consumer names are ``host:pid:random``) really crashed."""
    marks = tuple(f":{pid}:" for pid in pids)
    return lambda executor: any(mark in executor for mark in marks)


async def histories(redis: Redis, ids: Sequence[str]) -> dict[str, list[Event]]:
    """Each execution's events in log order."""
    out: dict[str, list[Event]] = {i: [] for i in ids}
    for event in await stream_events(redis, PARTITIONS):
        if event.aggregate_id in out:
            out[event.aggregate_id].append(event)
    return out


def outcomes(events: Sequence[Event]) -> list[str]:
    return [type_of(e).removeprefix("execution.") for e in events if type_of(e) in TERMINAL]


def holder(events: Sequence[Event]) -> str | None:
    """The executor running the execution now, as the log tells it (None once it ended or before a start)."""
    current = None
    for event in events:
        if isinstance(event, ExecutionStarted):
            current = event.executor
        elif type_of(event) in TERMINAL or isinstance(event, ExecutionRetrying):
            current = None
    return current


def after_cancel(events: Sequence[Event]) -> list[str]:
    cancels = [i for i, e in enumerate(events) if isinstance(e, ExecutionCancelled)]
    if not cancels:
        return []
    late = [f"{type_of(e)} {e.id}" for e in events[cancels[0] + 1:] if type_of(e) in AFTER_CANCEL_FORBIDDEN]
    return [f"after its cancel ({events[cancels[0]].id}): {late}"] if late else []


def _repeated_steps(events: Sequence[Event], real_crash: CrashCheck) -> list[str]:
    """Steps started twice in one attempt with no recovery from a real crash in between, steps completed
    twice, and recoveries from executors that never crashed."""
    problems: list[str] = []
    last_start: dict[tuple[int, int], int] = {}
    last_recovery = -1
    completed: set[int] = set()
    for i, event in enumerate(events):
        match event:
            case ExecutionRecovered(lost_executor=lost):
                if real_crash(lost):
                    last_recovery = i
                else:
                    problems.append(f"{event.id} recovered it from {lost}, which never crashed")
            case ExecutionRetrying():
                completed.clear()  # a new attempt runs the failed step (and what follows) again
            case StepStarted(step_index=step, attempt=attempt):
                previous = last_start.get((step, attempt))
                if previous is not None and last_recovery < previous:
                    problems.append(f"step {step} (attempt {attempt}) started again at {event.id} with no crash "
                                    f"since its start at {events[previous].id}")
                last_start[(step, attempt)] = i
            case StepCompleted(step_index=step):
                if step in completed:
                    problems.append(f"step {step} completed twice (again at {event.id})")
                completed.add(step)
    return problems


def broken_promises(events: Sequence[Event], *, outcome: str, steps: int, real_crash: CrashCheck) -> list[str]:
    """Every promise one execution's history breaks (empty when it kept them all)."""
    problems: list[str] = []
    ends = outcomes(events)
    if ends != [outcome]:
        problems.append(f"outcomes {ends}, expected exactly one: {outcome}")
    problems += after_cancel(events)
    problems += _repeated_steps(events, real_crash)
    if outcome == "completed":
        done = {e.step_index for e in events if isinstance(e, StepCompleted)}
        if done != set(range(steps)):
            problems.append(f"completed with steps {sorted(done)} of {steps} done")
    return problems


async def assert_kept_promises(redis: Redis, tenant_id: str, ids: Sequence[str], *, steps: int,
                               outcome: str = "completed", real_crash: CrashCheck = any_crash) -> None:
    """Each of ``ids`` ended exactly once, as ``outcome``, in the log and in Redis, and ran no step twice
    except across a real crash."""
    found = await histories(redis, ids)
    problems: dict[str, list[str]] = {}
    for execution_id in ids:
        wrong = broken_promises(found[execution_id], outcome=outcome, steps=steps, real_crash=real_crash)
        state = await status(redis, tenant_id, execution_id)
        if state.get("status") != outcome:
            wrong.append(f"Redis says {state.get('status')!r} (owner {state.get('owner')!r})")
        if wrong:
            problems[execution_id] = wrong
    assert not problems, f"{len(problems)} of {len(ids)} executions broke a promise: {problems}"


async def wait_finished(redis: Redis, tenant_id: str, ids: Sequence[str], *, timeout: float, why: str) -> None:
    """Until every execution is completed, failed or cancelled in Redis; the failure lists the rest."""
    async def finished() -> None:
        unfinished = {}
        for execution_id in ids:
            state = await status(redis, tenant_id, execution_id)
            if state.get("status") not in FINISHED:
                unfinished[execution_id] = (state.get("status"), state.get("owner"), state.get("step"))
        assert not unfinished, (f"{len(unfinished)} of {len(ids)} not finished (status, owner, step): {unfinished}; "
                                f"pending work entries per consumer: {await pending_by_consumer(redis, tenant_id)}")

    await assert_eventually(finished, timeout=timeout, interval=0.2, message=why)


async def slots_and_entries(redis: Redis, tenant_id: str) -> tuple[int, int, int]:
    """(running counter, queued counter, pending work entries) of the tenant's partition."""
    p = keys.partition_of(tenant_id, PARTITIONS)
    running = int(await redis.hget(keys.running(p), tenant_id) or 0)
    queued = int(await redis.hget(keys.queued(p), tenant_id) or 0)
    pending = 0
    for stream in keys.work_streams(p):
        if await redis.exists(stream):
            pending += int((await redis.xpending(stream, keys.GROUP_EXECUTOR))["pending"])
    return running, queued, pending


async def pending_by_consumer(redis: Redis, tenant_id: str) -> dict[str, int]:
    """Pending work entries of the tenant's partition per consumer (executors and pseudo-consumers)."""
    p = keys.partition_of(tenant_id, PARTITIONS)
    out: dict[str, int] = {}
    for stream in keys.work_streams(p):
        if await redis.exists(stream):
            for consumer in (await redis.xpending(stream, keys.GROUP_EXECUTOR))["consumers"]:
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else str(consumer["name"])
                out[name] = out.get(name, 0) + int(consumer["pending"])
    return out


async def assert_released(redis: Redis, tenant_id: str, *, timeout: float) -> None:
    """Everything ended, so the tenant holds no running slot, nothing is queued and no entry is pending."""
    async def released() -> None:
        running, queued, pending = await slots_and_entries(redis, tenant_id)
        assert (running, queued, pending) == (0, 0, 0), (
            f"running counter {running}, queued counter {queued}, pending work entries {pending}")

    await assert_eventually(released, timeout=timeout, interval=0.2, message="slots and work entries released")


async def assert_projection_equals_log(redis: Redis, engine: AsyncEngine, tenant_id: str, ids: Sequence[str],
                                       *, timeout: float = 30) -> None:
    """Once the projector caught up: each execution's row has its Redis status, and every projection table
    equals an in-memory fold of the whole log (no row missing, doubled or different), every event archived."""
    await caught_up(redis, engine, PARTITIONS, timeout=timeout)
    async with engine.connect() as conn:
        table = schema.executions
        rows = await conn.execute(select(table.c.id, table.c.status).where(table.c.id.in_(list(ids))))
        projected = {str(i): str(s) for i, s in rows}
    in_redis = {i: (await status(redis, tenant_id, i)).get("status") for i in ids}
    assert projected == in_redis, "execution rows differ from Redis"
    log = await stream_events(redis, PARTITIONS)
    differences = _differences(await snapshot(engine), fold(log))
    assert not differences, f"projection differs from the log: {differences}"
    assert await archived(engine) == len(log), "every log entry archived once"


def _differences(sql: Snapshot, log: Snapshot, limit: int = 10) -> list[str]:
    """Rows that differ between the SQL tables and the fold, by primary key (short, unlike a dict diff)."""
    out: list[str] = []
    for table in sorted(set(sql) | set(log)):
        left = _by_key(table, sql.get(table, []))
        right = _by_key(table, log.get(table, []))
        for key in sorted(set(left) | set(right), key=repr):
            if left.get(key) != right.get(key):
                out.append(f"{table} {key!r}: sql={left.get(key)!r} log={right.get(key)!r}")
    return out[:limit]


def _by_key(table: str, rows: Sequence[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {key_of(table, row): row for row in rows}
