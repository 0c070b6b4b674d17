"""Commands on an existing execution (cancel, change priority, retry, DLQ retry and purge) and on a workflow's
queued executions (pause, resume, delete).

Each builder takes the status the caller observed and guards on it, so a command that raced with the
executor is refused (nothing changes) instead of acting on a state it did not see.
"""

from __future__ import annotations

from shared import keys
from shared.admission import WORKFLOW_GONE_GUARD
from shared.commit import Unit
from shared.events import (
    ExecutionCancelled,
    ExecutionDlqPurged,
    ExecutionPriorityChanged,
    ExecutionRequeued,
    WorkflowDeleted,
    WorkflowPaused,
    WorkflowResumed,
)
from shared.state import FENCE, Status

STATUS_GUARD = "status"
DISPATCHED_GUARD = "dispatched"


def cancel_unit(*, p: int, tenant_id: str, execution_id: str, observed: Status, now_ms: int) -> Unit:
    """Cancel an execution that has not ended, whatever holds it.

    The cancel does all the clean-up itself, in the same atomic step: it revokes any hand-out (the fence
    moves on, so the executor's next commit is refused and it just stops), takes the work entry back, frees
    the concurrency slot, and removes a queued execution from its backlog. A running step is interrupted
    (told over pub/sub; an executor that misses it loses its lease at its next renewal).
    """
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "status", [observed.value], STATUS_GUARD)
    unit.event(ExecutionCancelled(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms))
    unit.hset(state_key, {"status": Status.CANCELLED.value})
    unit.hincrby(state_key, FENCE, 1)
    if observed is Status.QUEUED:
        unit.hincrby(keys.queued(p), tenant_id, -1)
        unit.unqueue(p, execution_id)
    unit.unwork(p, execution_id).release(p, tenant_id, execution_id)
    if observed in (Status.QUEUED, Status.RUNNING):  # queued: it may be dispatched already, about to start
        unit.publish(keys.cancel_channel(p), execution_id)
    return unit


def priority_unit(*, p: int, tenant_id: str, execution_id: str, previous: int, priority: int, now_ms: int) -> Unit:
    """Move a queued execution that no executor has taken yet to the back of another priority level."""
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "status", [Status.QUEUED.value], STATUS_GUARD)
    unit.require(state_key, "priority", [str(previous)], "priority")
    unit.require(state_key, "work_id", [""], DISPATCHED_GUARD)
    unit.event(
        ExecutionPriorityChanged(
            tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms, priority=priority, previous=previous
        )
    )
    unit.hset(state_key, {"priority": priority})
    unit.reprioritize(p, tenant_id, execution_id, previous, priority)
    return unit


def requeue_unit(
    *, p: int, tenant_id: str, execution_id: str, observed: Status, priority: int, from_dlq: bool, now_ms: int
) -> Unit:
    """Start a new series of attempts for a failed or cancelled execution (from the DLQ if it is there).

    It resumes from the step that failed unless the workflow says ``retry_from: start``. The fence moves on,
    so nothing left from an earlier hand-out can act on the new series.
    """
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "status", [observed.value], STATUS_GUARD)
    if from_dlq:
        unit.require(state_key, "dead_lettered", ["1"], "dead_lettered")
        unit.xdel_recorded(keys.dlq(p), state_key, "dlq_id")
    unit.event(
        ExecutionRequeued(
            tenant_id=tenant_id,
            aggregate_id=execution_id,
            ts=now_ms,
            reason="dlq_retry" if from_dlq else "retry",
            priority=priority,
        )
    )
    unit.unwork(p, execution_id).release(p, tenant_id, execution_id)  # no-ops unless something was left over
    unit.hset(state_key, {"status": Status.QUEUED.value, "attempt": 1, "dead_lettered": "0", "queued_at": now_ms,
                          "priority": priority})
    unit.hincrby(state_key, FENCE, 1)
    unit.hincrby(keys.queued(p), tenant_id, 1)
    unit.to_backlog(p, priority, tenant_id, execution_id)
    return unit


def workflow_pause_unit(*, p: int, tenant_id: str, workflow_id: str, paused: bool, now_ms: int) -> Unit:
    """Pause (dispatch sets its executions aside) or resume (they go back in front of their backlogs)."""
    wf_key = keys.workflow(p, workflow_id)
    unit = Unit(p).require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
    event = (WorkflowPaused if paused else WorkflowResumed)(tenant_id=tenant_id, aggregate_id=workflow_id, ts=now_ms)
    unit.event(event).hset(wf_key, {"paused": "1" if paused else "0"})
    if not paused:
        unit.unpark(p, workflow_id)
    return unit


def workflow_delete_unit(*, p: int, tenant_id: str, workflow_id: str, now_ms: int) -> Unit:
    """Delete a workflow. Its accepted executions still run, with the definition they pinned (as after an
    edit): those a pause set aside go back to their backlogs, since nothing could resume them any more."""
    wf_key = keys.workflow(p, workflow_id)
    unit = Unit(p).require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
    unit.event(WorkflowDeleted(tenant_id=tenant_id, aggregate_id=workflow_id, ts=now_ms))
    unit.hset(wf_key, {"deleted": "1", "paused": "0", "updated_at": now_ms})
    unit.unpark(p, workflow_id)
    return unit


def dlq_purge_unit(*, p: int, tenant_id: str, execution_id: str, now_ms: int) -> Unit:
    """Remove a dead-lettered execution from the DLQ; it stays ``failed`` in the history."""
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "dead_lettered", ["1"], "dead_lettered")
    unit.event(ExecutionDlqPurged(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms))
    unit.xdel_recorded(keys.dlq(p), state_key, "dlq_id")
    unit.hset(state_key, {"dead_lettered": "0"})
    return unit
