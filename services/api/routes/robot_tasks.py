"""The robot task protocol (DESIGN §10, docs/robots.md): robots take, renew and finish ``runs_on`` steps.

Every route takes a robot key and reaches only its tenant's tasks of its pool. A call on a task the robot
no longer holds (its lease ran out and it was offered again, the execution was cancelled, the task is done)
is a 409 whose code says which (``cancelled`` or ``lease_lost``) and changes nothing: each command is one
unit guarded by the execution still being parked on that task and the robot holding it.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_robot
from services.api.bodies import check_json_value, read_json
from services.api.context import ApiContext, context
from services.api.schemas import (
    HeartbeatIn,
    Lease,
    Task,
    TaskCompleteIn,
    TaskDone,
    TaskFailIn,
    TaskLogsIn,
    TaskNextIn,
)
from shared.domain.executions.state import read_execution
from shared.domain.robots import tasks as robot_tasks
from shared.domain.robots.registry import RobotState
from shared.infra.clock import now_ms
from shared.infra.errors import Conflict, NotFound, StepFailed
from shared.infra.sizes import encode_output
from shared.log import keys
from shared.log.commit import Refused, Unit
from shared.log.workflows import WorkflowDef
from shared.service import metrics


class TaskGone(Conflict):
    """The robot no longer holds the task: ``code`` tells it why (stop the step either way)."""

    def __init__(self, code: str, task_id: str) -> None:
        super().__init__(f"task {task_id} is no longer yours ({code}): stop working on it", task_id=task_id)
        self.code = code


def _lease_ms(ctx: ApiContext) -> int:
    return int(ctx.settings.robot_lease_s * 1000)


async def next_task(request: Request) -> Response:
    robot = await require_robot(request)
    body = await read_json(request, TaskNextIn, empty=TaskNextIn())
    ctx = context(request)
    deadline = time.monotonic() + body.wait_s
    while True:
        claimed = await robot_tasks.claim(ctx.redis, p=robot.partition, tenant_id=robot.tenant_id, pool=robot.pool,
                                          robot_id=robot.id, now_ms=now_ms(), lease_ms=_lease_ms(ctx))
        if claimed is not None:
            return responses.json(Task(task_id=claimed.task_id, execution_id=claimed.execution_id,
                                       step_index=claimed.step_index, action=claimed.action, label=claimed.label,
                                       params=claimed.params, attempt=claimed.attempt,
                                       lease_s=ctx.settings.robot_lease_s))
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=204)
        await ctx.offers.wait(robot.tenant_id, robot.pool, left)
        # Claim nothing for a robot that stopped listening, nor while the API stops (the robot asks again).
        if ctx.offers.closing or await request.is_disconnected():
            return Response(status_code=204)
        # A long poll is a sign of life: the robot shows as idle, not offline, while it waits.
        await ctx.redis.hset(keys.robot(robot.partition, robot.id), "last_seen", now_ms())


async def _held_task(request: Request, robot: RobotState) -> robot_tasks.TaskView:
    """The task named in the path as it stands: 404 if it is not this tenant's, 409 if the robot lost it."""
    task_id = request.path_params["task_id"]
    view = await robot_tasks.read_task(context(request).redis, robot.partition, task_id)
    if (not view.execution or view.tenant_id != robot.tenant_id
            or (view.task and view.task.get(b"pool", b"").decode() != robot.pool)):
        raise NotFound(f"task {task_id} not found")
    refusal = view.refusal(robot.id)
    if refusal is not None:
        raise TaskGone(refusal, task_id)
    return view


async def _commit(ctx: ApiContext, unit: Unit, task_id: str) -> None:
    outcome = await ctx.committer.commit(unit)
    if isinstance(outcome, Refused):
        raise TaskGone(outcome.label, task_id)
    metrics.observe(unit)  # a robot's step, and the execution it may have ended


async def _definition(ctx: ApiContext, view: robot_tasks.TaskView) -> WorkflowDef:
    definition = await ctx.definitions.read_key(ctx.redis, view.execution.def_key)
    if definition is None or view.step_index >= len(definition.steps):
        raise TaskGone(robot_tasks.LEASE_LOST, view.task_id)  # its pinned definition is gone: nothing to go on with
    return definition


async def heartbeat(request: Request) -> Response:
    robot = await require_robot(request)
    ctx = context(request)
    body = await read_json(request, HeartbeatIn, empty=HeartbeatIn())
    view = await _held_task(request, robot)
    unit = robot_tasks.heartbeat_unit(view, robot.id, now_ms=now_ms(), lease_ms=_lease_ms(ctx),
                                      progress=body.progress, message=body.message)
    await _commit(ctx, unit, view.task_id)
    return responses.json(Lease(lease_s=ctx.settings.robot_lease_s))


async def complete(request: Request) -> Response:
    robot = await require_robot(request)
    ctx = context(request)
    body = await read_json(request, TaskCompleteIn, empty=TaskCompleteIn())
    check_json_value(body.output, "output")  # JSON allows what the log cannot store: a 422, before anything
    view = await _held_task(request, robot)
    definition = await _definition(ctx, view)
    ts = now_ms()
    try:
        encode_output(body.output, ctx.settings.max_output_bytes)
    except StepFailed as too_large:  # the step fails, as it would in an executor
        unit = robot_tasks.fail_unit(view, robot.id, definition, now_ms=ts, error=too_large.message)
        step_status = "failed"
    else:
        unit = robot_tasks.complete_unit(view, robot.id, definition, now_ms=ts, output=body.output)
        step_status = "completed"
    await _commit(ctx, unit, view.task_id)
    return await _done(ctx, view, step_status)


async def fail(request: Request) -> Response:
    robot = await require_robot(request)
    ctx = context(request)
    body = await read_json(request, TaskFailIn)
    view = await _held_task(request, robot)
    definition = await _definition(ctx, view)
    error = body.message if body.kind == "application" else f"business: {body.message}"
    unit = robot_tasks.fail_unit(view, robot.id, definition, now_ms=now_ms(), error=error)
    await _commit(ctx, unit, view.task_id)
    return await _done(ctx, view, "failed")


async def logs(request: Request) -> Response:
    robot = await require_robot(request)
    ctx = context(request)
    body = await read_json(request, TaskLogsIn)
    view = await _held_task(request, robot)
    unit = robot_tasks.logs_unit(view, robot.id, now_ms=now_ms(),
                                 lines=[(line.level, line.message) for line in body.lines])
    await _commit(ctx, unit, view.task_id)
    return Response(status_code=204)


async def _done(ctx: ApiContext, view: robot_tasks.TaskView, step_status: str) -> Response:
    state = await read_execution(ctx.redis, view.p, view.execution_id, fields=("status",))
    status = state.status.value if state and state.status else "None"
    return responses.json(TaskDone(task_id=view.task_id, execution_id=view.execution_id, step_status=step_status,
                                   execution_status=status))


routes = [
    Route("/api/robots/tasks/next", next_task, methods=["POST"]),
    Route("/api/robots/tasks/{task_id}/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/robots/tasks/{task_id}/complete", complete, methods=["POST"]),
    Route("/api/robots/tasks/{task_id}/fail", fail, methods=["POST"]),
    Route("/api/robots/tasks/{task_id}/logs", logs, methods=["POST"]),
]
