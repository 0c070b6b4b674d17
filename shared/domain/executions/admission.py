"""Admission: the one path by which an execution is requested (API, bulk API and triggers alike).

Quota and backlog checks and counts, the ``execution.queued`` events, the aggregate state and the backlog
entries are one atomic unit: either every run of a request is queued and counted, or none is. Work
entries are made later, by the fair-share dispatcher, when an executor takes the execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.domain.aggregates import WorkflowState
from shared.domain.executions import ops as execution_ops
from shared.domain.executions.state import new_execution, record
from shared.infra.clock import month_of
from shared.infra.plans import Plan
from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import ExecutionQueued, outline
from shared.log.workflows import WorkflowDef

USAGE_TTL_S = 40 * 24 * 3600
QUOTA_GUARD = "quota"
BACKLOG_GUARD = "backlog_full"
WORKFLOW_GONE_GUARD = "workflow_deleted"
WORKFLOW_CHANGED_GUARD = "workflow_changed"

@dataclass(frozen=True, slots=True)
class Run:
    """One execution to queue."""

    execution_id: str
    priority: int
    params: dict[str, Any] = field(default_factory=dict)


def admission_unit(
    *,
    p: int,
    tenant_id: str,
    plan: Plan,
    workflow: WorkflowState,
    definition: WorkflowDef,
    runs: Sequence[Run],
    now_ms: int,
    trigger_type: str = "api",
    parent_execution_id: str | None = None,
    idempotency: tuple[str, bytes] | None = None,
    max_attempts: int | None = None,
    parent_step: int | None = None,
    depth: int = 0,
) -> Unit:
    """Queue ``runs`` of ``workflow`` (pinned at ``workflow.version``) if the monthly quota allows all of them.

    ``idempotency=(redis key, reply)``: a second request with the same key gets the first reply back
    (``Duplicate``) and changes nothing. ``max_attempts`` overrides the definition's ``retry.attempts`` for
    these runs (the executor reads the state's ``max_attempts``): a queue item's run gets 1, since its queue
    owns the retries of the item. A child execution names its parent, the parent's step and its depth.
    """
    unit = Unit(p)
    if idempotency is not None:
        unit.idempotent(idempotency[0])
    wf_key = keys.workflow(p, workflow.id)
    unit.require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
    unit.require(wf_key, "version", [str(workflow.version)], WORKFLOW_CHANGED_GUARD)
    usage_key = keys.usage(p, tenant_id, month_of(now_ms))
    unit.within_quota(usage_key, len(runs), plan.monthly_quota, QUOTA_GUARD)
    unit.within_hash_limit(keys.queued(p), tenant_id, len(runs), plan.max_backlog, BACKLOG_GUARD)
    unit.incrby(usage_key, len(runs), USAGE_TTL_S)
    unit.hincrby(keys.queued(p), tenant_id, len(runs))
    steps = outline(definition)
    for run in runs:
        record(unit, new_execution(p, run.execution_id), ExecutionQueued(
            tenant_id=tenant_id,
            aggregate_id=run.execution_id,
            ts=now_ms,
            workflow_id=workflow.id,
            workflow_version=workflow.version,
            steps=steps,
            params=run.params,
            priority=run.priority,
            trigger_type=trigger_type,
            parent_execution_id=parent_execution_id,
            parent_step=parent_step,
            depth=depth,
            max_attempts=max_attempts,
        ))
        execution_ops.to_backlog(unit, p, run.priority, tenant_id, run.execution_id)
    if idempotency is not None:
        unit.set(idempotency[0], idempotency[1], 24 * 3600)
    return unit
