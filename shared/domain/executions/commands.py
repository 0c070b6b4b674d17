"""Commands on an existing execution (cancel, change priority, retry, DLQ retry and purge) and on a workflow's
queued executions (pause, resume, delete).

Each builder takes the status the caller observed and guards on it, so a command that raced with the
executor is refused (nothing changes) instead of acting on a state it did not see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from shared.domain.aggregates import Status
from shared.domain.executions import ops as execution_ops
from shared.domain.executions.admission import WORKFLOW_GONE_GUARD
from shared.domain.executions.state import ExecutionState, record, revoke, to_hash
from shared.domain.queues.claims import QUEUE_RUN_ATTEMPTS
from shared.log import keys
from shared.log.commit import Unit, Value
from shared.log.events import (
    ExecutionCancelled,
    ExecutionDlqPurged,
    ExecutionPriorityChanged,
    ExecutionRequeued,
    WorkflowDeleted,
    WorkflowPaused,
    WorkflowResumed,
)

STATUS_GUARD = "status"
DISPATCHED_GUARD = "dispatched"

_packer = msgspec.msgpack.Encoder()


def cancel_unit(*, p: int, tenant_id: str, execution_id: str, observed: Status, now_ms: int) -> Unit:
    """Cancel an execution that has not ended, whatever holds it.

    The cancel does all the clean-up itself, in the same atomic step: it revokes any hand-out (the fence
    moves on, so the executor's next commit is refused and it just stops), takes the work entry back, frees
    the concurrency slot, and removes a queued execution from its backlog. A running step is interrupted
    (told over pub/sub; an executor that misses it loses its lease at its next renewal).
    """
    seen = _seen(p, tenant_id, execution_id, status=observed)
    unit = Unit(p).require(seen.key, "status", [observed.value], STATUS_GUARD)
    record(unit, seen, ExecutionCancelled(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms))
    revoke(unit, seen.key)
    if observed is Status.QUEUED:
        unit.hincrby(keys.queued(p), tenant_id, -1)
        execution_ops.unqueue(unit, p, execution_id)
    execution_ops.unwork(unit, p, execution_id)
    execution_ops.untask(unit, p, execution_id)
    execution_ops.release(unit, p, tenant_id, execution_id)
    if observed in (Status.QUEUED, Status.RUNNING):  # queued: it may be dispatched already, about to start
        unit.publish(keys.cancel_channel(p), execution_id)
    return unit


def priority_unit(*, p: int, tenant_id: str, execution_id: str, previous: int, priority: int, now_ms: int) -> Unit:
    """Move a queued execution that no executor has taken yet to the back of another priority level."""
    seen = _seen(p, tenant_id, execution_id, status=Status.QUEUED, priority=previous)
    unit = Unit(p).require(seen.key, "status", [Status.QUEUED.value], STATUS_GUARD)
    unit.require(seen.key, "priority", [str(previous)], "priority")
    unit.require(seen.key, "work_id", [""], DISPATCHED_GUARD)
    record(unit, seen, ExecutionPriorityChanged(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms,
                                                priority=priority, previous=previous))
    execution_ops.reprioritize(unit, p, tenant_id, execution_id, previous, priority)
    return unit


def requeue_unit(
    *, p: int, tenant_id: str, execution_id: str, observed: Status, priority: int, from_dlq: bool, now_ms: int,
    restore: Mapping[str, Value] | None = None,
) -> Unit:
    """Start a new series of attempts for a failed or cancelled execution (from the DLQ if it is there).

    It resumes from the step that failed unless the workflow says ``retry_from: start``. The fence moves on,
    so nothing left from an earlier hand-out can act on the new series. An ended execution's state carries a
    TTL (``ORQ_STATE_RETENTION_S``): the revived one loses it in the same step. ``restore`` is the state
    rebuilt from SQL (:func:`restored_state`) of one whose hash retention already dropped: it is written only
    if the hash is still absent, so two racing retries revive it once.
    """
    seen = _seen(p, tenant_id, execution_id, status=observed)
    state_key = seen.key
    unit = Unit(p)
    if restore is None:
        unit.require(state_key, "status", [observed.value], STATUS_GUARD)
        if from_dlq:
            unit.require(state_key, "dead_lettered", ["1"], "dead_lettered")
    else:
        unit.require_absent(state_key, STATUS_GUARD).hset(state_key, restore)
    if from_dlq:
        unit.xdel_recorded(keys.dlq(p), state_key, "dlq_id")
    record(unit, seen, ExecutionRequeued(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms,
                                         reason="dlq_retry" if from_dlq else "retry", priority=priority))
    # No-ops unless something was left over.
    execution_ops.unwork(unit, p, execution_id)
    execution_ops.untask(unit, p, execution_id)
    execution_ops.release(unit, p, tenant_id, execution_id)
    revoke(unit, state_key)
    unit.persist(state_key)
    unit.hincrby(keys.queued(p), tenant_id, 1)
    execution_ops.to_backlog(unit, p, priority, tenant_id, execution_id)
    return unit


def restored_state(
    *, p: int, row: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], retry_from_start: bool, dlq_id: str,
    fence: int,
) -> dict[str, Value]:
    """The Redis state of an ended execution rebuilt from its SQL rows (``executions`` and its
    ``execution_steps``), for a retry after retention dropped its hash.

    What the executor needs to resume: the pinned definition key, params, the step to resume from and the
    outputs of the steps before it (as SQL holds them: JSON values). ``fence`` must exceed any token handed
    out before the hash was dropped (the caller passes the time in ms; tokens are small counters).
    """
    # As the executor left it: a failure of a ``retry_from: start`` workflow resumes at 0; a cancel where it was.
    from_start = retry_from_start and row["status"] == Status.FAILED.value
    resume = 0 if from_start else resume_step(row["current_step"], steps)
    state = ExecutionState(
        p=p, id=row["id"], tenant=row["tenant_id"], workflow_id=row["workflow_id"],
        def_key=keys.workflow_version(p, row["workflow_id"], row["workflow_version"]), priority=row["priority"],
        status=Status(row["status"]), attempt=row["attempt"], retry_count=row["retry_count"],
        crash_count=row["crash_count"], step=resume, fence=fence, queued_at=row["queued_at"],
        params=_packer.encode(row["params"] or {}), trigger_type=row["trigger_type"], dead_lettered=bool(row["in_dlq"]),
        # As admission set it: the queue owns the retries of its items.
        max_attempts=QUEUE_RUN_ATTEMPTS if row["trigger_type"] == "queue_item" else None,
        started_at=row["started_at"], dlq_id=dlq_id,
        outputs={step["step_index"]: _packer.encode(step["output_data"]) for step in steps
                 if step["step_index"] < resume and step["status"] == Status.COMPLETED.value})
    return to_hash(state, lease=True)


def resume_step(current_step: int | None, steps: Sequence[Mapping[str, Any]]) -> int:
    """The step a failed or cancelled execution resumes from, read off its SQL rows: the step it was at
    (``current_step``, the last one started) unless that one completed, then the next.

    A failed step is run again: it is the one that ended the run, or (rarely: cancelled right after a step
    that failed with ``on_error: continue``) one whose failure was let pass, which is the safe side to err on.
    """
    at = current_step or 0
    done = any(int(s["step_index"]) == at and s["status"] == Status.COMPLETED.value for s in steps)
    return at + 1 if done else at


def workflow_pause_unit(*, p: int, tenant_id: str, workflow_id: str, paused: bool, now_ms: int) -> Unit:
    """Pause (dispatch sets its executions aside) or resume (they go back in front of their backlogs)."""
    wf_key = keys.workflow(p, workflow_id)
    unit = Unit(p).require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
    event = (WorkflowPaused if paused else WorkflowResumed)(tenant_id=tenant_id, aggregate_id=workflow_id, ts=now_ms)
    unit.event(event).hset(wf_key, {"paused": "1" if paused else "0"})
    if not paused:
        execution_ops.unpark(unit, p, workflow_id)
    return unit


def workflow_delete_unit(*, p: int, tenant_id: str, workflow_id: str, now_ms: int) -> Unit:
    """Delete a workflow. Its accepted executions still run, with the definition they pinned (as after an
    edit): those a pause set aside go back to their backlogs, since nothing could resume them any more."""
    wf_key = keys.workflow(p, workflow_id)
    unit = Unit(p).require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
    unit.event(WorkflowDeleted(tenant_id=tenant_id, aggregate_id=workflow_id, ts=now_ms))
    unit.hset(wf_key, {"deleted": "1", "paused": "0", "updated_at": now_ms})
    execution_ops.unpark(unit, p, workflow_id)
    return unit


def dlq_purge_unit(*, p: int, tenant_id: str, execution_id: str, now_ms: int) -> Unit:
    """Remove a dead-lettered execution from the DLQ; it stays ``failed`` in the history."""
    unit = Unit(p)
    leave_dlq(unit, _seen(p, tenant_id, execution_id, dead_lettered=True), now_ms=now_ms, label="dead_lettered")
    return unit


def leave_dlq(unit: Unit, seen: ExecutionState, *, now_ms: int, label: str) -> None:
    """Take the dead-lettered execution ``seen`` out of the DLQ, guarded (refused as ``label``) on it being still
    dead-lettered, and still at ``seen.status`` when the caller saw one."""
    if seen.status is not None:
        unit.require(seen.key, "status", [seen.status.value], label)
    unit.require(seen.key, "dead_lettered", ["1"], label)
    record(unit, seen, ExecutionDlqPurged(tenant_id=seen.tenant, aggregate_id=seen.id, ts=now_ms))
    unit.xdel_recorded(keys.dlq(seen.p), seen.key, "dlq_id")


def _seen(p: int, tenant_id: str, execution_id: str, **guarded: Any) -> ExecutionState:
    """What a command knows of the execution: what it guards on (the events it records set their fields)."""
    return ExecutionState(p=p, id=execution_id, tenant=tenant_id, **guarded)
