"""How an attempt ends, decided in one place for every runner of a step.

Three runners finish steps: the executor (services/executor/run.py), a robot's task
(shared/domain/robots/tasks.py) and a child execution that a parked parent waits for
(shared/domain/executions/subworkflows.py). A step's failure follows the same rule whichever ran it: another
attempt after the backoff while the policy allows, else the dead-letter queue. The runner says how its hand-out
ends (``Ending``): the executor acks the entry it holds; a parked execution takes its entry back from the
``parked`` consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.domain.executions import ops as execution_ops
from shared.domain.executions.state import ExecutionState, record, set_parked
from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import (
    EventBase,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionRetrying,
    StepFailed,
)
from shared.log.workflows import WorkflowDef


@dataclass(frozen=True, slots=True)
class Attempt:
    """The attempt that is ending: its execution as the runner last saw it, and how many attempts it may have."""

    state: ExecutionState
    max_attempts: int

    @property
    def p(self) -> int:
        return self.state.p

    @property
    def tenant_id(self) -> str:
        return self.state.tenant

    @property
    def execution_id(self) -> str:
        return self.state.id

    @property
    def attempt(self) -> int:
        return self.state.attempt

    def ids(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "aggregate_id": self.execution_id}


@dataclass(frozen=True, slots=True)
class Ending:
    """What the runner adds to a unit when its hand-out ends: ``end`` for good (completed, dead-lettered),
    ``backoff`` when the execution waits to retry (its entry must end up on the ``backoff`` consumer)."""

    end: Callable[[Unit], None]
    backoff: Callable[[Unit], None]


def max_attempts(state: ExecutionState, definition: WorkflowDef) -> int:
    """The attempts a series may have: the workflow's policy, unless the run carries its own
    (``max_attempts``: a work-queue item's run leaves retrying to its queue)."""
    return state.max_attempts or definition.retry.attempts


def parked_ending(state: ExecutionState) -> Ending:
    """The ending of an execution parked outside any executor: its entry waits on the ``parked`` consumer."""
    p, tenant_id, execution_id = state.p, state.tenant, state.id
    stream, entry = state.work_stream, state.work_id

    def end(unit: Unit) -> None:
        execution_ops.unwork(unit, p, execution_id)
        execution_ops.release(unit, p, tenant_id, execution_id)

    def backoff(unit: Unit) -> None:
        if stream and entry:
            unit.claim(stream, keys.GROUP_EXECUTOR, keys.CONSUMER_BACKOFF, entry)

    return Ending(end, backoff)


def fail_step(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, error: str, ts: int, *,
              duration_ms: int, ending: Ending, worker_id: str | None = None) -> ExecutionState:
    """Step ``index`` failed: another attempt after the backoff while the policy allows, else dead-letter."""
    failed = StepFailed(**attempt.ids(), ts=ts, step_index=index, error=error, duration_ms=duration_ms,
                        attempt=attempt.attempt, worker_id=worker_id)
    resume_at = 0 if definition.retry_from == "start" else index
    if attempt.attempt >= attempt.max_attempts:
        return dead_letter(unit, attempt, ts, error, reason="exhausted", step=resume_at, ending=ending,
                           first=(failed,))
    delay = definition.retry.backoff.delay_before(attempt.attempt + 1)
    after = record(unit, attempt.state, failed, ExecutionRetrying(
        **attempt.ids(), ts=ts, failed_attempt=attempt.attempt, next_attempt=attempt.attempt + 1, delay_ms=delay,
        error=error, resume_step=resume_at))
    # The entry waits on the backoff consumer; the 'due' index says when the retry may be taken.
    execution_ops.release(unit, attempt.p, attempt.tenant_id, attempt.execution_id)
    ending.backoff(unit)
    unit.zadd(keys.due(attempt.p), ts + delay, attempt.execution_id)
    return after


def dead_letter(unit: Unit, attempt: Attempt, ts: int, error: str, *, reason: str, step: int,
                ending: Ending, first: Sequence[EventBase] = ()) -> ExecutionState:
    """The attempt ends the execution in the DLQ (after ``first``, the events that led there), resuming at
    ``step`` if it is retried."""
    after = record(unit, attempt.state, *first, ExecutionFailed(
        **attempt.ids(), ts=ts, error=error, attempt=attempt.attempt, dead_lettered=True, resume_step=step),
        ExecutionDeadLettered(**attempt.ids(), ts=ts, reason=reason, error=error))  # type: ignore[arg-type]
    unit.xadd(keys.dlq(attempt.p), {"e": attempt.execution_id, "tenant": attempt.tenant_id, "reason": reason,
                                    "error": error[:2000]}, ref=(after.key, "dlq_id"))
    ending.end(unit)
    return after


# ``parked`` on an execution waiting outside any executor: for a robot (shared/domain/robots/tasks.py), for a
# child execution (shared/domain/executions/subworkflows.py), or ready to go on with its next step (the
# dispatcher's ``due`` mode).
RESUME = "resume"


def go_on(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, ts: int,
          result: Any) -> ExecutionState:
    """Step ``index`` of a parked execution is behind it (``attempt.state`` is after its event): the execution
    completes when that was the last step, else it waits for an executor to run the next one (on the ``due``
    index, due now)."""
    state = attempt.state
    if index >= len(definition.steps) - 1:
        return complete(unit, attempt, ts, result, ending=parked_ending(state))
    unit.zadd(keys.due(attempt.p), ts, attempt.execution_id)
    unit.ring(attempt.p)  # an idle executor looks at the due index at once, not at its next poll
    return set_parked(unit, state, RESUME)


def let_pass(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, error: str, ts: int, *,
             duration_ms: int, worker_id: str | None = None) -> ExecutionState:
    """Step ``index`` of a parked execution failed with ``on_error: continue``: record it and go on; a run whose
    last step failed this way ends with the output of the step before it."""
    after = record(unit, attempt.state, StepFailed(
        **attempt.ids(), ts=ts, step_index=index, error=error, duration_ms=duration_ms, attempt=attempt.attempt,
        continued=True, worker_id=worker_id))
    previous = after.outputs.get(index - 1)
    return go_on(unit, Attempt(after, attempt.max_attempts), definition, index, ts,
                 msgspec.msgpack.decode(previous) if previous else None)


def complete(unit: Unit, attempt: Attempt, ts: int, result: Any, *, ending: Ending) -> ExecutionState:
    """The execution completes with ``result``; its duration counts from its series' first start."""
    started = attempt.state.started_at or ts
    after = record(unit, attempt.state, ExecutionCompleted(**attempt.ids(), ts=ts, result=result,
                                                           duration_ms=max(0, ts - started)))
    ending.end(unit)
    return after
