"""The execution aggregate: the hash a commit writes is the fold of the events it appends (real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.aggregates import Status
from shared.domain.commit_script import committer
from shared.domain.executions.commands import cancel_unit
from shared.domain.executions.state import EVOLVED_FIELDS, ExecutionState, evolve, new_execution, read_execution, record
from shared.infra.clock import new_id
from shared.log import keys
from shared.log.commit import Unit
from shared.log.consumer import records_of
from shared.log.events import (
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionDlqPurged,
    ExecutionFailed,
    ExecutionLog,
    ExecutionPriorityChanged,
    ExecutionQueued,
    ExecutionRecovered,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepOutline,
    StepWaiting,
)
from shared.log.redis import connect
from tests.helpers import REDIS_URL

P = 7
IDS: dict[str, Any] = {"tenant_id": "t1", "ts": 1_000}


def _queued(execution_id: str, priority: int, max_attempts: int | None) -> ExecutionQueued:
    return ExecutionQueued(tenant_id="t1", aggregate_id=execution_id, ts=1_000, workflow_id="w1", workflow_version=3,
                           steps=[StepOutline(action="noop")] * 3, params={"n": 1}, priority=priority,
                           max_attempts=max_attempts)


INT64 = st.integers(-(2**63), 2**63 - 1)  # what an output may hold (a larger one fails its step: sizes.py)


def _later(execution_id: str) -> st.SearchStrategy[EventBase]:
    """Any execution event after its first (the fold must take them in any order: commands race)."""
    ids = {"tenant_id": st.just("t1"), "aggregate_id": st.just(execution_id)}
    ts = st.integers(1_001, 10**9)
    step = st.integers(0, 2)
    return st.one_of(
        st.builds(ExecutionStarted, **ids, ts=ts, attempt=st.integers(1, 3), executor=st.just("x1"), from_step=step),
        st.builds(StepCompleted, **ids, ts=ts, step_index=step, output=st.one_of(st.none(), INT64, st.text())),
        st.builds(StepFailed, **ids, ts=ts, step_index=step, error=st.just("boom"), continued=st.booleans()),
        st.builds(StepWaiting, **ids, ts=ts, step_index=step, child_execution_id=st.just("child")),
        st.builds(ExecutionRetrying, **ids, ts=ts, failed_attempt=st.just(1), next_attempt=st.integers(2, 4),
                  delay_ms=st.integers(0, 5_000), error=st.just("boom"), resume_step=st.one_of(st.none(), step)),
        st.builds(ExecutionFailed, **ids, ts=ts, error=st.just("boom"), dead_lettered=st.booleans(),
                  resume_step=st.one_of(st.none(), step)),
        st.builds(ExecutionDeadLettered, **ids, ts=ts),
        st.builds(ExecutionCompleted, **ids, ts=ts),
        st.builds(ExecutionCancelled, **ids, ts=ts),
        st.builds(ExecutionPriorityChanged, **ids, ts=ts, priority=st.integers(1, 10), previous=st.just(5)),
        st.builds(ExecutionRequeued, **ids, ts=ts, reason=st.just("retry"), priority=st.integers(1, 10)),
        st.builds(ExecutionDlqPurged, **ids, ts=ts),
        st.builds(ExecutionRecovered, **ids, ts=ts, crash_count=st.integers(1, 4), lost_executor=st.just("x0"),
                  executor=st.just("x1")),
        st.builds(ExecutionLog, **ids, ts=ts, step_index=step, message=st.just("a line")),
    )


def _evolved(state: ExecutionState | None) -> dict[str, Any]:
    assert state is not None
    return {name: getattr(state, name) for name in EVOLVED_FIELDS}


@st.composite
def _histories(draw: st.DrawFn) -> tuple[ExecutionQueued, list[list[EventBase]]]:
    execution_id = new_id()
    first = _queued(execution_id, draw(st.integers(1, 10)), draw(st.one_of(st.none(), st.just(1))))
    commits = draw(st.lists(st.lists(_later(execution_id), min_size=1, max_size=3), max_size=8))
    return first, commits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=_histories())
def test_the_hash_is_the_fold_of_the_log(history: tuple[ExecutionQueued, list[list[EventBase]]]) -> None:
    """Each commit records events against the state read back from Redis, as a command does; after every commit
    the hash reads back as the fold of every event so far, and the log holds exactly those events."""
    asyncio.run(_replay(*history))


async def _replay(first: ExecutionQueued, commits: list[list[EventBase]]) -> None:
    redis = connect(REDIS_URL)
    writer = committer(redis)
    execution_id = first.aggregate_id
    try:
        expected = evolve(new_execution(P, execution_id), first)
        unit = Unit(P)
        record(unit, new_execution(P, execution_id), first)
        await writer.commit(unit)
        assert _evolved(await read_execution(redis, P, execution_id)) == _evolved(expected)
        appended: list[EventBase] = [first]
        for events in commits:
            seen = await read_execution(redis, P, execution_id)
            assert seen is not None
            unit = Unit(P)
            record(unit, seen, *events)
            await writer.commit(unit)
            for event in events:
                expected = evolve(expected, event)
            appended += events
            assert _evolved(await read_execution(redis, P, execution_id)) == _evolved(expected)
        logged = [r.event() for r in records_of(await redis.xrange(keys.log(P)))
                  if r.event().aggregate_id == execution_id]
        assert [(type(e), e.ts) for e in logged] == [(type(e), e.ts) for e in appended]
    finally:
        await redis.delete(keys.execution(P, execution_id))
        await writer.close()
        await redis.aclose()


async def test_a_new_execution_is_written_whole(redis: Any) -> None:
    """Fields equal to their defaults are written too: the dispatch script reads priority and status."""
    writer = committer(redis)
    unit = Unit(P)
    record(unit, new_execution(P, "e1"), _queued("e1", 10, None))
    await writer.commit(unit)
    raw = await redis.hgetall(keys.execution(P, "e1"))
    assert {k: raw[k] for k in (b"priority", b"status", b"attempt", b"step", b"dead_lettered")} == {
        b"priority": b"10", b"status": b"queued", b"attempt": b"1", b"step": b"0", b"dead_lettered": b"0"}
    await writer.close()


async def test_a_command_that_knows_only_its_guard_writes_what_its_event_means(redis: Any) -> None:
    """A cancel knows the status it observed, nothing else: its event still sets the status it means, and
    leaves every field it does not mean as the executor left it."""
    writer = committer(redis)
    unit = Unit(P)
    queued = record(unit, new_execution(P, "e2"), _queued("e2", 4, None))
    record(unit, queued, ExecutionStarted(**IDS, aggregate_id="e2", attempt=1, executor="x1"),
           StepCompleted(**IDS, aggregate_id="e2", step_index=0, output={"ok": 1}))
    await writer.commit(unit)
    before = await read_execution(redis, P, "e2")
    await writer.commit(cancel_unit(p=P, tenant_id="t1", execution_id="e2", observed=Status.RUNNING, now_ms=2_000))
    after = await read_execution(redis, P, "e2")
    assert before is not None and after is not None
    assert after.status is Status.CANCELLED
    assert _evolved(after) == {**_evolved(before), "status": Status.CANCELLED}
    assert after.decoded_outputs() == {0: {"ok": 1}} and after.fence == before.fence + 1
    await writer.close()
