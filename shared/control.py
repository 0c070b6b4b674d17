"""Commands on an existing execution: cancel, change priority, retry, DLQ retry and purge.

Each builder takes the status the caller observed and guards on it, so a command that raced with the
executor is refused (nothing changes) instead of acting on a state it did not see.
"""

from __future__ import annotations

from shared import keys
from shared.commit import Unit
from shared.events import ExecutionCancelled, ExecutionDlqPurged, ExecutionPriorityChanged, ExecutionRequeued
from shared.state import Status

STATUS_GUARD = "status"


def cancel_unit(*, p: int, tenant_id: str, execution_id: str, observed: Status, now_ms: int) -> Unit:
    """Queued or retrying: its work entry is taken back. Running: the executor stops before the next step
    and the running step's task is cancelled (told over pub/sub); the executor acks when its next commit
    is refused."""
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "status", [observed.value], STATUS_GUARD)
    unit.event(ExecutionCancelled(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms))
    unit.hset(state_key, {"status": Status.CANCELLED.value})
    if observed is Status.RUNNING:
        unit.publish(keys.cancel_channel(p), execution_id)
    elif observed is Status.QUEUED:
        # Its backlog entry stays behind and is skipped by the dispatcher (status no longer queued).
        unit.hincrby(keys.queued(p), tenant_id, -1)
    else:
        unit.dequeue(state_key)  # retrying: its entry waits on the backoff consumer
    return unit


def priority_unit(*, p: int, tenant_id: str, execution_id: str, previous: int, priority: int, now_ms: int) -> Unit:
    """Move a queued execution to another priority level (a new work entry; the old one is taken back)."""
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "status", [Status.QUEUED.value], STATUS_GUARD)
    unit.require(state_key, "priority", [str(previous)], "priority")
    unit.event(
        ExecutionPriorityChanged(
            tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms, priority=priority, previous=previous
        )
    )
    # The entry at the old level stays behind and is skipped by the dispatcher (priority no longer matches).
    unit.hset(state_key, {"priority": priority})
    unit.to_backlog(p, priority, tenant_id, execution_id)
    return unit


def requeue_unit(
    *, p: int, tenant_id: str, execution_id: str, observed: Status, priority: int, from_dlq: bool, now_ms: int
) -> Unit:
    """Start a new series of attempts for a failed or cancelled execution (from the DLQ if it is there).

    It resumes from the step that failed unless the workflow says ``retry_from: start``.
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
    unit.hset(state_key, {"status": Status.QUEUED.value, "attempt": 1, "dead_lettered": "0", "queued_at": now_ms,
                          "priority": priority})
    unit.hdel(state_key, "retry_delay", "owner")
    unit.hincrby(keys.queued(p), tenant_id, 1)
    unit.to_backlog(p, priority, tenant_id, execution_id)
    return unit


def dlq_purge_unit(*, p: int, tenant_id: str, execution_id: str, now_ms: int) -> Unit:
    """Remove a dead-lettered execution from the DLQ; it stays ``failed`` in the history."""
    state_key = keys.execution(p, execution_id)
    unit = Unit(p).require(state_key, "dead_lettered", ["1"], "dead_lettered")
    unit.event(ExecutionDlqPurged(tenant_id=tenant_id, aggregate_id=execution_id, ts=now_ms))
    unit.xdel_recorded(keys.dlq(p), state_key, "dlq_id")
    unit.hset(state_key, {"dead_lettered": "0"})
    return unit
