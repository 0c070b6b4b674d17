"""Honest figures in the fold (issue 16, item 3): a cancel closes the running step, ``error_message`` is the
outcome's, ``duration_ms`` after a DLQ retry counts the last attempt series only, progress counts completed
steps."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.log.events import (
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionProgress,
    ExecutionQueued,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    outline,
)
from tests.projector.factories import MID_MONTH_MS, definition, fold

T, W, X = "t" * 32, "w" * 32, "x" * 32
T0 = MID_MONTH_MS


def _at(ms: int, cls: type[EventBase], **fields: Any) -> EventBase:
    """An event of execution X, ``ms`` after T0."""
    return cls(tenant_id=T, aggregate_id=X, ts=T0 + ms, **fields)


def _fold(*events: EventBase, steps: int = 3) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    queued = ExecutionQueued(tenant_id=T, aggregate_id=X, ts=T0, workflow_id=W, workflow_version=1,
                             steps=outline(definition("flow", steps)), params={}, priority=5)
    history = [queued, *events]
    rows = fold([msgspec.structs.replace(ev, id=f"{ev.ts}-{i}") for i, ev in enumerate(history)])
    [execution] = rows["executions"]
    return execution, rows["execution_steps"]


def test_cancel_closes_the_running_step() -> None:
    execution, steps = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_100, StepCompleted, step_index=0, duration_ms=100),
        _at(1_200, StepStarted, step_index=1, action="log"),
        _at(1_700, ExecutionCancelled),
    )
    assert execution["status"] == "cancelled" and execution["completed_at"] == T0 + 1_700
    assert execution["duration_ms"] == 700
    assert [s["status"] for s in steps] == ["completed", "cancelled", "pending"]
    assert steps[1]["completed_at"] == T0 + 1_700 and steps[1]["duration_ms"] == 500
    assert (execution["steps_completed"], execution["steps_failed"]) == (1, 0)


def test_cancel_of_a_queued_execution_leaves_its_steps_pending() -> None:
    execution, steps = _fold(_at(500, ExecutionCancelled))
    assert execution["status"] == "cancelled" and execution["duration_ms"] is None
    assert {s["status"] for s in steps} == {"pending"}


def test_a_success_on_attempt_two_has_no_error_and_its_step_keeps_the_earlier_error() -> None:
    execution, steps = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_050, StepFailed, step_index=0, error="boom", duration_ms=50),
        _at(1_060, ExecutionRetrying, failed_attempt=1, next_attempt=2, delay_ms=100, error="boom"),
        _at(1_200, ExecutionStarted, attempt=2, executor="e1", from_step=0),
        _at(1_200, StepStarted, step_index=0, action="noop", attempt=2),
        _at(1_250, StepCompleted, step_index=0, duration_ms=50),
        _at(1_300, ExecutionCompleted, duration_ms=300),
        steps=1,
    )
    assert execution["status"] == "completed" and execution["error_message"] is None
    assert execution["retry_count"] == 1 and execution["attempt"] == 2
    assert steps[0]["status"] == "completed" and steps[0]["attempts"] == 2
    assert steps[0]["error_message"] == "boom"  # the attempt history: what failed before it succeeded


def test_retrying_shows_the_error_that_caused_the_retry() -> None:
    execution, _ = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_050, StepFailed, step_index=0, error="boom", duration_ms=50),
        _at(1_060, ExecutionRetrying, failed_attempt=1, next_attempt=2, delay_ms=100, error="boom"),
        steps=1,
    )
    assert execution["status"] == "retrying" and execution["error_message"] == "boom"


def test_duration_after_a_dlq_retry_counts_the_last_series_only() -> None:
    execution, _ = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_300, StepFailed, step_index=0, error="boom", duration_ms=300),
        _at(1_300, ExecutionFailed, error="boom", attempt=1, dead_lettered=True),
        _at(1_300, ExecutionDeadLettered, error="boom"),
        _at(17_000, ExecutionRequeued, reason="dlq_retry", priority=5),
        _at(17_100, ExecutionStarted, attempt=1, executor="e1"),
        _at(17_100, StepStarted, step_index=0, action="noop"),
        _at(17_400, StepCompleted, step_index=0, duration_ms=300),
        # The executor measures from the first start it ever saw: 16.4 s, the DLQ time included.
        _at(17_400, ExecutionCompleted, duration_ms=16_400),
        steps=1,
    )
    assert execution["status"] == "completed"
    assert execution["started_at"] == T0 + 17_100 and execution["completed_at"] == T0 + 17_400
    assert execution["duration_ms"] == 300


def test_duration_of_a_retried_series_runs_from_its_first_start() -> None:
    execution, _ = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_050, ExecutionRetrying, failed_attempt=1, next_attempt=2, delay_ms=100, error="boom"),
        _at(1_200, ExecutionStarted, attempt=2, executor="e1"),
        _at(1_300, ExecutionCompleted, duration_ms=300),
        steps=1,
    )
    assert execution["started_at"] == T0 + 1_000 and execution["duration_ms"] == 300


def test_progress_of_a_dead_lettered_run_counts_its_completed_steps() -> None:
    execution, steps = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_010, StepCompleted, step_index=0),
        _at(1_020, StepStarted, step_index=1, action="log"),
        _at(1_030, StepCompleted, step_index=1),
        _at(1_040, StepStarted, step_index=2, action="set"),
        _at(1_050, StepFailed, step_index=2, error="boom"),
        _at(1_060, ExecutionFailed, error="boom", attempt=1, dead_lettered=True),
        _at(1_060, ExecutionDeadLettered, error="boom"),
    )
    assert [s["status"] for s in steps] == ["completed", "completed", "failed"]
    assert execution["steps_completed"] == 2 and execution["progress"] == 66


def test_a_failed_step_adds_no_progress_and_a_step_report_moves_within_its_share() -> None:
    execution, _ = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_010, StepFailed, step_index=0, error="meh", continued=True),
        _at(1_020, StepStarted, step_index=1, action="log"),
        _at(1_030, ExecutionProgress, step_index=1, percent=50.0),
        steps=2,
    )
    # Step 0 failed (let pass): no share; step 1 is half done by its own report: 25 %.
    assert execution["progress"] == 25
    execution, _ = _fold(
        _at(1_000, ExecutionStarted, attempt=1, executor="e1"),
        _at(1_000, StepStarted, step_index=0, action="noop"),
        _at(1_010, StepCompleted, step_index=0),
        _at(1_020, StepStarted, step_index=1, action="log"),
        _at(1_030, ExecutionProgress, step_index=1, percent=50.0),
        _at(1_040, StepFailed, step_index=1, error="boom"),
        steps=2,
    )
    assert execution["progress"] == 50  # the failed step's own report no longer counts
