"""Robot tasks: ``runs_on`` steps offered to the customer's robots (DESIGN §10, docs/robots.md).

The executor that reaches a ``runs_on`` step renders its params and **offers** it: the execution parks (its
work entry moves to the ``parked`` consumer, its concurrency slot is freed) and a task hash
``orq:{p}:task:<task id>`` joins the pool's offers (``keys.offers``, by priority then age). A robot of the pool
**claims** it (``robot_claim.lua``) under a lease it renews by heartbeats; its outcome comes back as the usual
step events, and the execution goes on with an executor (``parked`` = ``resume`` puts it on the ``due`` index)
or ends there. A task whose lease runs out is offered again under a new id (counted like an executor crash),
so a late call with the old id gets 409 and changes nothing.

Task hash fields: ``execution_id``, ``tenant``, ``pool``, ``step_index``, ``attempt``, ``action``, ``label``,
``params`` (msgpack, rendered), ``offered_at``; once claimed ``robot``, ``claimed_at``, ``lease_until``.
Every command on a task is guarded by the execution still being parked on it (its ``task`` field), by the
execution's status, and by the robot holding it, so each applies at most once and only to the live task.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.domain.executions import ops as execution_ops
from shared.domain.executions.outcomes import (
    Attempt,
    dead_letter,
    fail_step,
    go_on,
    let_pass,
    max_attempts,
    parked_ending,
)
from shared.domain.executions.state import ExecutionState, from_hash, new_execution, park, record, unparked
from shared.log import keys
from shared.log.commit import Unit, load_lua
from shared.log.events import (
    ExecutionLog,
    ExecutionProgress,
    ExecutionRecovered,
    StepClaimed,
    StepCompleted,
    StepOffered,
    encode,
)
from shared.log.redis import PipelinedScript, raw_hash, run_pipeline, text
from shared.log.workflows import StepDef, WorkflowDef

PARKED_ON_ROBOT = "robot"
# Guard labels: what a refused command tells the robot (409 {"error": {"code": ...}}).
LEASE_LOST = "lease_lost"
CANCELLED = "cancelled"

_claim = PipelinedScript(load_lua("shared.domain.robots", "robot_claim.lua"))
_packer = msgspec.msgpack.Encoder()
_any = msgspec.msgpack.Decoder()
# Far above any offer time in ms, so the priority decides first and the age second.
_PRIORITY_SCALE = 10**14


def new_task_id(execution_id: str) -> str:
    """A task id names its execution, so a stale id still tells which execution it was about."""
    return f"{execution_id}.{secrets.token_hex(4)}"


def execution_of(task_id: str) -> str:
    return task_id.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class Offer:
    """What an offer needs to know about the step and its execution."""

    p: int
    tenant_id: str
    execution_id: str
    priority: int
    step_index: int
    step: StepDef
    attempt: int
    params: Any  # rendered


def offer(unit: Unit, offer: Offer, ts: int, task_id: str | None = None) -> str:
    """Add the offer to ``unit`` (the caller parks the execution's entry in the same unit); returns the task id."""
    assert offer.step.runs_on is not None
    task_id = task_id or new_task_id(offer.execution_id)
    pool = offer.step.runs_on
    unit.event(StepOffered(tenant_id=offer.tenant_id, aggregate_id=offer.execution_id, ts=ts,
                           step_index=offer.step_index, action=offer.step.action, label=offer.step.label, pool=pool,
                           task_id=task_id, attempt=offer.attempt))
    unit.hset(keys.task(offer.p, task_id), {
        "execution_id": offer.execution_id, "tenant": offer.tenant_id, "pool": pool,
        "step_index": offer.step_index, "attempt": offer.attempt, "action": offer.step.action,
        "label": offer.step.label or "", "params": _packer.encode(offer.params), "offered_at": ts,
        "priority": offer.priority,
    })
    unit.zadd(keys.offers(offer.p, offer.tenant_id, pool), offer.priority * _PRIORITY_SCALE + ts, task_id)
    park(unit, keys.execution(offer.p, offer.execution_id), PARKED_ON_ROBOT, task=task_id)
    unit.publish(keys.offers_channel(offer.p), f"{offer.tenant_id} {pool}")
    return task_id


# --- claiming -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    task_id: str
    execution_id: str
    step_index: int
    attempt: int
    action: str
    label: str | None
    params: Any
    lease_until: int


async def claim(redis: Redis, *, p: int, tenant_id: str, pool: str, robot_id: str, now_ms: int,
                lease_ms: int) -> Claimed | None:
    """Take the pool's first offered task for ``robot_id``, or None when nothing is offered."""
    template = encode(StepClaimed(tenant_id=tenant_id, aggregate_id="", ts=now_ms, step_index=0, task_id="",
                                  robot_id=robot_id))
    args: list[str | int | bytes] = [keys.prefix(p), tenant_id, pool, robot_id, now_ms, lease_ms, template]
    replies = await run_pipeline(redis, lambda pipe: _claim.queue(pipe, [keys.log(p)], args), [_claim])
    reply = replies[0]
    if not reply:
        return None
    task_id, execution_id, index, attempt, action, label, params, until = reply
    return Claimed(text(task_id), text(execution_id), int(index), int(attempt), text(action), text(label) or None,
                   _any.decode(params), int(until))


# --- commands on a claimed task -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task and its execution as read before a command on it is decided (the command guards on them)."""

    p: int
    task_id: str
    task: dict[bytes, bytes]
    execution: ExecutionState

    @property
    def execution_id(self) -> str:
        return execution_of(self.task_id)

    @property
    def step_index(self) -> int:
        return int(self.task.get(b"step_index", b"0"))

    @property
    def tenant_id(self) -> str:
        return self.execution.tenant

    def refusal(self, robot_id: str) -> str | None:
        """Why a command on this task must be refused (a 409 code), or None while the robot holds it."""
        if self.execution.status is Status.CANCELLED:
            return CANCELLED
        if (not self.task or self.task.get(b"robot", b"").decode() != robot_id
                or self.execution.task != self.task_id or self.execution.status is not Status.RUNNING):
            return LEASE_LOST
        return None


async def read_task(redis: Redis, p: int, task_id: str) -> TaskView:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.task(p, task_id))
        pipe.hgetall(keys.execution(p, execution_of(task_id)))
        task, execution = await pipe.execute()
    execution_id = execution_of(task_id)
    return TaskView(p, task_id, raw_hash(task),
                    from_hash(p, execution_id, execution) or new_execution(p, execution_id))


def _held(view: TaskView, robot_id: str) -> Unit:
    """A unit that applies only while ``robot_id`` still holds the live task (guards in the order of
    :meth:`TaskView.refusal`, so a refused unit's label is the code to answer)."""
    state_key = keys.execution(view.p, view.execution_id)
    return (Unit(view.p)
            .require(state_key, "status", [Status.RUNNING.value], CANCELLED)
            .require(state_key, "task", [view.task_id], LEASE_LOST)
            .require(keys.task(view.p, view.task_id), "robot", [robot_id], LEASE_LOST))


def heartbeat_unit(view: TaskView, robot_id: str, *, now_ms: int, lease_ms: int, progress: float | None,
                   message: str | None) -> Unit:
    until = now_ms + lease_ms
    unit = _held(view, robot_id)
    unit.hset(keys.task(view.p, view.task_id), {"lease_until": until})
    unit.zadd(keys.task_leases(view.p), until, view.task_id)
    if progress is not None:
        unit.event(ExecutionProgress(tenant_id=view.tenant_id, aggregate_id=view.execution_id, ts=now_ms,
                                     step_index=view.step_index, percent=max(0.0, min(100.0, progress)),
                                     message=message))
    elif message:
        unit.event(ExecutionLog(tenant_id=view.tenant_id, aggregate_id=view.execution_id, ts=now_ms,
                                step_index=view.step_index, message=message))
    return unit


def logs_unit(view: TaskView, robot_id: str, *, now_ms: int, lines: list[tuple[str, str]]) -> Unit:
    unit = _held(view, robot_id)
    for level, message in lines:
        unit.event(ExecutionLog(tenant_id=view.tenant_id, aggregate_id=view.execution_id, ts=now_ms,
                                step_index=view.step_index, message=message, level=level))
    return unit


def _attempt(view: TaskView, definition: WorkflowDef, state: ExecutionState | None = None) -> Attempt:
    """The attempt the task is part of (the guards keep the execution on this task, so on its attempt)."""
    state = state or view.execution
    return Attempt(state, max_attempts(state, definition))


def _duration(view: TaskView, now_ms: int) -> int:
    return max(0, now_ms - int(view.task.get(b"claimed_at", b"0") or now_ms))


def complete_unit(view: TaskView, robot_id: str, definition: WorkflowDef, *, now_ms: int, output: Any) -> Unit:
    """The robot finished the step with ``output`` (already checked for size)."""
    index = view.step_index
    unit = _held(view, robot_id)
    execution_ops.untask(unit, view.p, view.execution_id)
    after = record(unit, unparked(view.execution), StepCompleted(
        tenant_id=view.tenant_id, aggregate_id=view.execution_id, ts=now_ms, step_index=index, output=output,
        duration_ms=_duration(view, now_ms), worker_id=robot_id))
    go_on(unit, _attempt(view, definition, after), definition, index, now_ms, output)
    return unit


def fail_unit(view: TaskView, robot_id: str, definition: WorkflowDef, *, now_ms: int, error: str) -> Unit:
    """The robot failed the step: the workflow's retry policy and DLQ decide, as for any step (a step with
    ``on_error: continue`` lets it pass)."""
    index = view.step_index
    unit = _held(view, robot_id)
    execution_ops.untask(unit, view.p, view.execution_id)
    step = definition.steps[index]
    duration = _duration(view, now_ms)
    if step.on_error == "continue":
        let_pass(unit, _attempt(view, definition, unparked(view.execution)), definition, index, error, now_ms,
                 duration_ms=duration, worker_id=robot_id)
        return unit
    fail_step(unit, _attempt(view, definition), definition, index, error, now_ms, duration_ms=duration,
              ending=parked_ending(view.execution), worker_id=robot_id)
    return unit


# --- leases ---------------------------------------------------------------------------------------------------


def reoffer_unit(view: TaskView, definition: WorkflowDef, *, now_ms: int, max_crashes: int) -> Unit:
    """The task's robot stopped heartbeating: offer the step again under a new id (counted like an executor
    crash; past ``max_crashes`` the execution is dead-lettered as poison). Guarded by the lease it observed,
    so a heartbeat that renewed it meanwhile wins."""
    state_key = keys.execution(view.p, view.execution_id)
    robot = view.task.get(b"robot", b"").decode()
    unit = (Unit(view.p)
            .require(state_key, "status", [Status.RUNNING.value], CANCELLED)
            .require(state_key, "task", [view.task_id], LEASE_LOST)
            .require(keys.task(view.p, view.task_id), "lease_until",
                     [view.task.get(b"lease_until", b"").decode()], LEASE_LOST))
    crashes = view.execution.crash_count + 1
    recovered = record(unit, view.execution, ExecutionRecovered(
        tenant_id=view.tenant_id, aggregate_id=view.execution_id, ts=now_ms, crash_count=crashes,
        lost_executor=f"robot:{robot}", executor=""))
    execution_ops.untask(unit, view.p, view.execution_id)
    index = view.step_index
    attempt = _attempt(view, definition, recovered)
    if crashes > max_crashes:
        error = f"robot went silent {crashes} times running step {index}: dead-lettered as poison"
        dead_letter(unit, attempt, now_ms, error, reason="poison", step=index, ending=parked_ending(recovered))
        return unit
    offer(unit, Offer(view.p, view.tenant_id, view.execution_id, int(view.task.get(b"priority", b"5")), index,
                      definition.steps[index], attempt.attempt, _any.decode(view.task.get(b"params", b"\x80"))),
          now_ms)
    return unit


async def expired_tasks(redis: Redis, p: int, now_ms: int, count: int = 100) -> list[str]:
    """Claimed tasks of partition ``p`` whose lease ran out by ``now_ms`` (oldest first)."""
    ids = await redis.zrangebyscore(keys.task_leases(p), "-inf", now_ms, start=0, num=count)
    return [text(cast(bytes, i)) for i in ids]
