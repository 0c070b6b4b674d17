"""The pure fold: semantics per event, idempotency, and batch-split invariance through SQL round trips."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.log.events import (
    EventBase,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionDlqPurged,
    ExecutionFailed,
    ExecutionLog,
    ExecutionQueued,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    TenantCreated,
    WorkflowSaved,
    outline,
)
from shared.readmodel.projection import Projection
from tests.projector.factories import MID_MONTH_MS, definition, fold, histories, with_ids
from tests.projector.helpers import assert_apply_is_idempotent, fold_in_batches

T, W, X = "t" * 32, "w" * 32, "x" * 32


def _history(*events: EventBase) -> list[EventBase]:
    return with_ids([msgspec.structs.replace(ev, ts=MID_MONTH_MS + 10 * i) for i, ev in enumerate(events)])


def _then(events: list[EventBase], event: EventBase) -> list[EventBase]:
    ts = events[-1].ts + 1
    return [*events, msgspec.structs.replace(event, ts=ts, id=f"{ts}-0")]


def _setup() -> list[EventBase]:
    wf = definition("flow", 2)
    return [
        TenantCreated(tenant_id=T, aggregate_id=T, ts=0, name="Acme", plan="pro", api_key_id="k" * 32,
                      api_key_hash="h" * 64, api_key_prefix="orq_tttt"),
        WorkflowSaved(tenant_id=T, aggregate_id=W, ts=0, version=1, definition=wf),
        ExecutionQueued(tenant_id=T, aggregate_id=X, ts=0, workflow_id=W, workflow_version=1, steps=outline(wf),
                        params={"a": 1}, priority=5),
    ]


def _ex(cls: type[EventBase], **fields: object) -> EventBase:
    return cls(tenant_id=T, aggregate_id=X, ts=0, **fields)


def test_successful_run() -> None:
    events = _history(
        *_setup(),
        _ex(ExecutionStarted, attempt=1, executor="e1"),
        _ex(StepStarted, step_index=0, action="noop"),
        _ex(StepCompleted, step_index=0, output={"x": 1}, duration_ms=4),
        _ex(ExecutionLog, step_index=1, message="hello"),
        _ex(StepStarted, step_index=1, action="log", label="step 1"),
        _ex(StepCompleted, step_index=1, duration_ms=2),
        _ex(ExecutionCompleted, result={"ok": True}, duration_ms=55),
    )
    rows = fold(events)
    [execution] = rows["executions"]
    assert execution["status"] == "completed"
    assert execution["steps_total"] == 2 and execution["steps_completed"] == 2 and execution["steps_failed"] == 0
    assert execution["queued_at"] == MID_MONTH_MS + 20
    assert execution["started_at"] == MID_MONTH_MS + 30
    assert execution["completed_at"] == MID_MONTH_MS + 90
    assert execution["duration_ms"] == 55 and execution["result"] == {"ok": True} and execution["progress"] == 100
    assert [s["status"] for s in rows["execution_steps"]] == ["completed", "completed"]
    assert rows["execution_steps"][0]["output_data"] == {"x": 1}
    assert rows["execution_steps"][1]["label"] == "step 1" and rows["execution_steps"][1]["attempts"] == 1
    assert [(r["message"], r["event_id"]) for r in rows["execution_logs"]] == [("hello", events[6].id)]
    assert rows["usage_monthly"] == [{"tenant_id": T, "month": "202601", "executions": 1}]
    assert rows["tenants"][0]["plan"] == "pro" and rows["api_keys"][0]["key_hash"] == "h" * 64
    assert rows["workflows"][0]["definition"]["name"] == "flow"


def test_retry_dead_letter_and_requeue() -> None:
    events = _history(
        *_setup(),
        _ex(ExecutionStarted, attempt=1, executor="e1"),
        _ex(StepStarted, step_index=0, action="noop"),
        _ex(StepFailed, step_index=0, error="nope"),
        _ex(ExecutionRetrying, failed_attempt=1, next_attempt=2, delay_ms=5, error="nope"),
        _ex(ExecutionStarted, attempt=2, executor="e2"),
        _ex(StepStarted, step_index=0, action="noop", attempt=2),
        _ex(StepFailed, step_index=0, error="still"),
        _ex(ExecutionFailed, error="still", attempt=2),
        _ex(ExecutionDeadLettered, error="still"),
    )
    failed = fold(events)
    execution = failed["executions"][0]
    assert execution["status"] == "failed" and execution["retry_count"] == 1 and execution["attempt"] == 2
    assert execution["dead_lettered"] and execution["in_dlq"] and execution["dead_lettered_at"] is not None
    assert execution["started_at"] == MID_MONTH_MS + 30 and execution["duration_ms"] == 70
    assert execution["steps_failed"] == 1 and failed["execution_steps"][0]["attempts"] == 2

    purged = fold(_then(events, _ex(ExecutionDlqPurged)))
    assert purged["executions"][0]["in_dlq"] is False and purged["executions"][0]["dead_lettered"] is True

    requeued = fold(_then(events, _ex(ExecutionRequeued, reason="dlq_retry", priority=2)))
    execution = requeued["executions"][0]
    assert (execution["status"], execution["priority"], execution["attempt"]) == ("queued", 2, 1)
    assert not execution["in_dlq"] and execution["completed_at"] is None


def test_poison_dead_letter_fails_a_running_execution() -> None:
    events = _history(*_setup(), _ex(ExecutionStarted, attempt=1, executor="e1"),
                      _ex(ExecutionDeadLettered, reason="poison", error="crashed 3 times"))
    execution = fold(events)["executions"][0]
    assert execution["status"] == "failed" and execution["error_message"] == "crashed 3 times"
    assert execution["dead_lettered"] and execution["in_dlq"]


def test_continued_step_failure_counts_as_failed() -> None:
    events = _history(*_setup(), _ex(ExecutionStarted, attempt=1, executor="e1"),
                      _ex(StepStarted, step_index=0, action="noop"),
                      _ex(StepFailed, step_index=0, error="meh", continued=True),
                      _ex(StepStarted, step_index=1, action="log"), _ex(StepCompleted, step_index=1))
    execution = fold(events)["executions"][0]
    assert (execution["steps_completed"], execution["steps_failed"]) == (1, 1)


def test_events_without_a_queued_execution_are_ignored() -> None:
    events = _history(_ex(ExecutionStarted, attempt=1, executor="e1"), _ex(StepStarted, step_index=0, action="noop"))
    assert all(not rows for rows in fold(events).values())


@given(history=histories())
@settings(max_examples=60, deadline=None)
def test_apply_is_idempotent(history: list[EventBase]) -> None:
    assert_apply_is_idempotent(history)


def test_queued_twice_counts_usage_once_even_without_ids() -> None:
    events = [msgspec.structs.replace(ev, id="") for ev in _history(*_setup())]
    projection = Projection()
    projection.apply_all([*events, *events])  # type: ignore[list-item]
    assert projection.rows["usage_monthly"][(T, "202601")]["executions"] == 1


@given(history=histories(), data=st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_batches_through_sql_equal_one_fold(database_url: str, history: list[EventBase], data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(history)), max_size=6), label="cuts")
    asyncio.run(fold_in_batches(database_url, history, cuts))


def test_log_rows_with_the_same_stream_id_in_two_partitions_are_both_kept() -> None:
    other_tenant, other_execution, same_id = "u" * 32, "y" * 32, "99999999999999-0"
    events = _history(*_setup())
    wf = definition("flow", 1)
    events += [
        ExecutionQueued(tenant_id=other_tenant, aggregate_id=other_execution, ts=1, workflow_id=W, workflow_version=1,
                        steps=outline(wf), priority=5, id="99999999999990-0"),
        ExecutionLog(tenant_id=other_tenant, aggregate_id=other_execution, ts=2, step_index=0, message="b",
                     id=same_id),
        msgspec.structs.replace(_ex(ExecutionLog, step_index=0, message="a"), id=same_id),
    ]
    logs = fold(events)["execution_logs"]
    assert [(r["execution_id"], r["event_id"], r["message"]) for r in logs] == [
        (X, same_id, "a"), (other_execution, same_id, "b")
    ]
