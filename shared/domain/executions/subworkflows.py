"""Sub-workflows: the ``workflow`` action starts a child execution and, with ``wait``, parks the parent until
the child ends (DESIGN §11, docs/workflows.md).

The child is admitted like any run of the tenant (quota, backlog, priority within the plan) in the same
atomic unit that parks the parent, so a parent never waits for a child that was not queued. Parent and
child are of one tenant, so of one partition. The child's hash records ``parent``, ``parent_step`` and its
``depth``; the parent's records ``waits_for`` (its child) and ``parked`` = ``child``.

The child's end reaches the parent through the log: the trigger service's log reactions see the child's
``execution.completed`` / ``failed`` / ``cancelled`` and commits the parent's step outcome
(:func:`parent_outcome_unit`), guarded by the parent still waiting for that child, so a redelivered event
changes nothing. A cancelled parent's child is cancelled the same way (:func:`child_to_cancel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.domain.actions.schemas import WorkflowParams
from shared.domain.aggregates import FINISHED, Status, read_tenant, read_workflow
from shared.domain.executions.admission import Run, admission_unit
from shared.domain.executions.outcomes import Attempt, fail_step, go_on, let_pass, max_attempts, parked_ending
from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import ExecutionState, clear_parked, read_execution, record, set_parked
from shared.infra.clock import new_id
from shared.infra.errors import StepFailed, ValidationFailed
from shared.infra.plans import Plan, plan_named
from shared.log.commit import Unit
from shared.log.events import StepCompleted, StepWaiting
from shared.log.workflows import WorkflowDef

PARKED_ON_CHILD = "child"
MAX_DEPTH = 10  # a run may start children nested this deep (a call cycle a template hides stops here)
TRIGGER_TYPE = "workflow"  # the trigger_type of a child execution

@dataclass(frozen=True, slots=True)
class Child:
    execution_id: str
    unit: Unit  # its admission, to be absorbed into the parent's unit


async def admit_child(redis: Redis, definitions: PinnedDefinitions, plans: Mapping[str, Plan], *, p: int,
                      partitions: int, parent: ExecutionState, step_index: int, params: WorkflowParams,
                      now_ms: int) -> Child:
    """The child's admission unit; ``StepFailed`` when it cannot be started (unknown workflow, too deep)."""
    tenant_id = parent.tenant
    depth = parent.depth + 1
    if depth > MAX_DEPTH:
        raise StepFailed(f"depth_exceeded: sub-workflows nest at most {MAX_DEPTH} deep")
    workflow = await read_workflow(redis, p, params.workflow_id)
    if workflow is None or workflow.deleted or workflow.tenant_id != tenant_id:
        raise StepFailed(f"unknown workflow {params.workflow_id!r}")
    definition = await definitions.read(redis, p, workflow.id, workflow.version)
    tenant = await read_tenant(redis, partitions, tenant_id)
    if definition is None or tenant is None:
        raise StepFailed(f"unknown workflow {params.workflow_id!r}")
    plan = plan_named(plans, tenant.plan)
    priority = max(parent.priority, plan.min_priority)
    child_id = new_id()
    unit = admission_unit(p=p, tenant_id=tenant_id, plan=plan, workflow=workflow, definition=definition,
                          runs=[Run(child_id, priority, dict(params.params))], now_ms=now_ms,
                          trigger_type=TRIGGER_TYPE, parent_execution_id=parent.id, parent_step=step_index,
                          depth=depth)
    return Child(child_id, unit)


def wait_for(unit: Unit, parent: ExecutionState, *, step_index: int, child_id: str, now_ms: int) -> ExecutionState:
    """Park the parent on its child (the caller parks its work entry and frees its slot in the same unit)."""
    waiting = record(unit, parent, StepWaiting(tenant_id=parent.tenant, aggregate_id=parent.id, ts=now_ms,
                                               step_index=step_index, child_execution_id=child_id))
    return set_parked(unit, waiting, PARKED_ON_CHILD)


async def parent_outcome_unit(redis: Redis, definitions: PinnedDefinitions, *, p: int, child_id: str, status: str,
                              result: Any, error: str, now_ms: int) -> Unit | None:
    """The unit that ends the parent's waiting step with its child's outcome, or None when no parent waits
    for this child (it has none, or the parent moved on: cancelled, retried, already told)."""
    child = await read_execution(redis, p, child_id, fields=("parent", "parent_step"))
    if child is None or child.parent is None:
        return None
    index = child.parent_step or 0
    state = await read_execution(redis, p, child.parent)
    if (state is None or state.waits_for != child_id or state.parked != PARKED_ON_CHILD
            or state.status is not Status.RUNNING):
        return None
    definition = await definitions.read_key(redis, state.def_key)
    if definition is None:
        return None
    key = state.key
    unit = (Unit(p).require(key, "status", [Status.RUNNING.value], "status")
            .require(key, "waits_for", [child_id], "waits_for")
            .require(key, "parked", [PARKED_ON_CHILD], "parked"))
    waited = max(0, now_ms - (state.waiting_since or now_ms))
    state = clear_parked(unit, state)
    attempt = Attempt(state, max_attempts(state, definition))
    if status == Status.COMPLETED.value:
        after = record(unit, state, StepCompleted(tenant_id=state.tenant, aggregate_id=state.id, ts=now_ms,
                                                  step_index=index, output=result, duration_ms=waited))
        go_on(unit, Attempt(after, attempt.max_attempts), definition, index, now_ms, result)
        return unit
    message = f"child execution {child_id} {status}" + (f": {error}" if error else "")
    step = definition.steps[index]
    if step.on_error == "continue":
        let_pass(unit, attempt, definition, index, message, now_ms, duration_ms=waited)
        return unit
    fail_step(unit, attempt, definition, index, message, now_ms, duration_ms=waited, ending=parked_ending(state))
    return unit


async def child_to_cancel(redis: Redis, p: int, parent_id: str) -> tuple[str, Status] | None:
    """The child a cancelled parent was waiting for, with its status, if it has not ended."""
    parent = await read_execution(redis, p, parent_id, fields=("waits_for",))
    if parent is None or parent.waits_for is None:
        return None
    child = await read_execution(redis, p, parent.waits_for, fields=("status",))
    if child is None or child.status is None or child.status in FINISHED:
        return None
    return parent.waits_for, child.status


# --- at save time ---------------------------------------------------------------------------------------------

_MAX_VISITED = 1000  # workflows looked at per save (a tenant's call graph is small; the bound is for safety)


def called_workflows(definition: WorkflowDef) -> list[tuple[int, str]]:
    """(step index, workflow id) of the steps that call a literal workflow id (a templated one is known only at
    run time, where the depth cap stops a cycle)."""
    calls = []
    for index, step in enumerate(definition.steps):
        target = step.params.get("workflow_id") if step.action == "workflow" else None
        if isinstance(target, str) and "{{" not in target:
            calls.append((index, target))
    return calls


async def check_calls(redis: Redis, definitions: PinnedDefinitions, *, p: int, tenant_id: str, workflow_id: str,
                      definition: WorkflowDef) -> None:
    """Refuse (``ValidationFailed``) a definition calling an unknown workflow, or one that calls back (a cycle)."""
    for index, target in called_workflows(definition):
        where = f"steps[{index}].params.workflow_id"
        if target == workflow_id:
            raise ValidationFailed(f"{where}: a workflow cannot call itself (call cycle)", field=where,
                                   cycle=[workflow_id, workflow_id])
        path = await _path_back(redis, definitions, p, tenant_id, target, workflow_id)
        if path is None:
            continue
        if not path:
            raise ValidationFailed(f"{where}: unknown workflow {target!r}", field=where)
        cycle = [workflow_id, *path]
        raise ValidationFailed(f"{where}: call cycle {' -> '.join(cycle)}", field=where, cycle=cycle)


async def _path_back(redis: Redis, definitions: PinnedDefinitions, p: int, tenant_id: str, start: str,
                     goal: str) -> list[str] | None:
    """The call path from ``start`` back to ``goal`` (ending with it); None when there is none; [] when
    ``start`` is not a live workflow of the tenant."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier and len(parents) < _MAX_VISITED:
        current = frontier.pop()
        workflow = await read_workflow(redis, p, current)
        if workflow is None or workflow.deleted or workflow.tenant_id != tenant_id:
            if current == start:
                return []
            continue
        called = await definitions.read(redis, p, workflow.id, workflow.version)
        for _, target in called_workflows(called) if called else []:
            if target == goal:
                path: list[str] = [goal]
                node: str | None = current
                while node is not None:
                    path.append(node)
                    node = parents[node]
                return list(reversed(path))
            if target not in parents:
                parents[target] = current
                frontier.append(target)
    return None
