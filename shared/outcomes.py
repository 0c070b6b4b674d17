"""How an attempt ends, decided in one place for every runner of a step.

Three runners finish steps: the executor (services/executor/run.py), a robot's task
(shared/robot_tasks.py) and a child execution that a parked parent waits for (shared/subworkflows.py). A
step's failure follows the same rule whichever ran it: another attempt after the backoff while the policy
allows, else the dead-letter queue. The runner says how its hand-out ends (``Ending``): the executor acks the
entry it holds; a parked execution takes its entry back from the ``parked`` consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shared import keys
from shared.commit import Unit
from shared.events import (
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionRetrying,
    StepFailed,
)
from shared.state import Status
from shared.workflows import WorkflowDef

_decode = msgspec.msgpack.Decoder().decode


@dataclass(frozen=True, slots=True)
class Attempt:
    """The attempt that is ending: which execution, which attempt of its series, how many it may have."""

    p: int
    tenant_id: str
    execution_id: str
    attempt: int
    max_attempts: int

    @property
    def state_key(self) -> str:
        return keys.execution(self.p, self.execution_id)

    def ids(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "aggregate_id": self.execution_id}


@dataclass(frozen=True, slots=True)
class Ending:
    """What the runner adds to a unit when its hand-out ends: ``end`` for good (completed, dead-lettered),
    ``backoff`` when the execution waits to retry (its entry must end up on the ``backoff`` consumer)."""

    end: Callable[[Unit], None]
    backoff: Callable[[Unit], None]


def max_attempts(state: Mapping[bytes, bytes], definition: WorkflowDef) -> int:
    """The attempts a series may have: the workflow's policy, unless the run carries its own
    (``max_attempts``: a work-queue item's run leaves retrying to its queue)."""
    own = state.get(b"max_attempts")
    return int(own) if own else definition.retry.attempts


def parked_ending(p: int, tenant_id: str, execution_id: str, state: Mapping[bytes, bytes]) -> Ending:
    """The ending of an execution parked outside any executor: its entry waits on the ``parked`` consumer."""
    stream, entry = state.get(b"work_stream", b"").decode(), state.get(b"work_id", b"").decode()

    def end(unit: Unit) -> None:
        unit.unwork(p, execution_id).release(p, tenant_id, execution_id)

    def backoff(unit: Unit) -> None:
        if stream and entry:
            unit.claim(stream, keys.GROUP_EXECUTOR, keys.CONSUMER_BACKOFF, entry)

    return Ending(end, backoff)


def fail_step(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, error: str, ts: int, *,
              duration_ms: int, ending: Ending, worker_id: str | None = None) -> None:
    """Step ``index`` failed: another attempt after the backoff while the policy allows, else dead-letter."""
    key = attempt.state_key
    unit.event(StepFailed(**attempt.ids(), ts=ts, step_index=index, error=error, duration_ms=duration_ms,
                          attempt=attempt.attempt, worker_id=worker_id))
    resume_at = 0 if definition.retry_from == "start" else index
    if attempt.attempt < attempt.max_attempts:
        delay = definition.retry.backoff.delay_before(attempt.attempt + 1)
        retry_at = ts + delay
        unit.event(ExecutionRetrying(**attempt.ids(), ts=ts, failed_attempt=attempt.attempt,
                                     next_attempt=attempt.attempt + 1, delay_ms=delay, error=error))
        unit.hset(key, {"status": Status.RETRYING.value, "attempt": attempt.attempt + 1, "step": resume_at,
                        "retry_at": retry_at})
        unit.hincrby(key, "retry_count", 1)
        # The entry waits on the backoff consumer; the 'due' index says when the retry may be taken.
        unit.release(attempt.p, attempt.tenant_id, attempt.execution_id)
        ending.backoff(unit)
        unit.zadd(keys.due(attempt.p), retry_at, attempt.execution_id)
    else:
        dead_letter(unit, attempt, ts, error, reason="exhausted", step=resume_at, ending=ending)


def dead_letter(unit: Unit, attempt: Attempt, ts: int, error: str, *, reason: str, step: int,
                ending: Ending) -> None:
    key = attempt.state_key
    unit.event(ExecutionFailed(**attempt.ids(), ts=ts, error=error, attempt=attempt.attempt, dead_lettered=True))
    unit.event(ExecutionDeadLettered(**attempt.ids(), ts=ts, reason=reason, error=error))  # type: ignore[arg-type]
    unit.hset(key, {"status": Status.FAILED.value, "dead_lettered": "1", "step": step})
    unit.xadd(keys.dlq(attempt.p), {"e": attempt.execution_id, "t": attempt.tenant_id, "reason": reason,
                                    "error": error[:2000]}, ref=(key, "dlq_id"))
    ending.end(unit)


# ``parked`` on an execution waiting outside any executor: for a robot (shared/robot_tasks.py), for a child
# execution (shared/subworkflows.py), or ready to go on with its next step (the dispatcher's ``due`` mode).
RESUME = "resume"


def go_on(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, ts: int, result: Any,
          state: Mapping[bytes, bytes]) -> None:
    """Step ``index`` of a parked execution is behind it: the execution completes when that was the last step,
    else it waits for an executor to run the next one (on the ``due`` index, due now)."""
    if index >= len(definition.steps) - 1:
        started = int(state.get(b"started_at", b"0") or ts)
        complete(unit, attempt, ts, result, started_ms=started,
                 ending=parked_ending(attempt.p, attempt.tenant_id, attempt.execution_id, state))
        return
    unit.hset(attempt.state_key, {"parked": RESUME})
    unit.zadd(keys.due(attempt.p), ts, attempt.execution_id)
    unit.ring(attempt.p)  # an idle executor looks at the due index at once, not at its next poll


def let_pass(unit: Unit, attempt: Attempt, definition: WorkflowDef, index: int, error: str, ts: int, *,
             duration_ms: int, state: Mapping[bytes, bytes], worker_id: str | None = None) -> None:
    """Step ``index`` of a parked execution failed with ``on_error: continue``: record it and go on; a run whose
    last step failed this way ends with the output of the step before it."""
    unit.event(StepFailed(**attempt.ids(), ts=ts, step_index=index, error=error, duration_ms=duration_ms,
                          attempt=attempt.attempt, continued=True, worker_id=worker_id))
    unit.hset(attempt.state_key, {"step": index + 1})
    previous = state.get(f"out:{index - 1}".encode())
    go_on(unit, attempt, definition, index, ts, _decode(previous) if previous else None, state)


def complete(unit: Unit, attempt: Attempt, ts: int, result: Any, *, started_ms: int, ending: Ending) -> None:
    unit.event(ExecutionCompleted(**attempt.ids(), ts=ts, result=result, duration_ms=max(0, ts - started_ms)))
    unit.hset(attempt.state_key, {"status": Status.COMPLETED.value})
    ending.end(unit)
