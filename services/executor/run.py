"""Running one execution: start, steps in order, then complete, retry later, or dead-letter.

Every commit of a run, logs and progress included, requires the fencing token the execution was handed out
with. A takeover, a cancel or a new series of attempts moves the token on (and does its own clean-up in the
same atomic step), so the run's next commit is refused and it just stops: a refused run never acks, deletes
or releases anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from services.executor.job import Job
from shared.domain.actions.runtime import Actions
from shared.domain.actions.schemas import WorkflowParams
from shared.domain.aggregates import FENCE, SEQ, Status
from shared.domain.executions import ops as execution_ops
from shared.domain.executions import outcomes, subworkflows
from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import clear_parked, forget_work, number, record
from shared.domain.executions.templates import render
from shared.domain.robots import tasks as robot_tasks
from shared.infra.clock import now_ms
from shared.infra.errors import StepFailed
from shared.infra.plans import Plan
from shared.infra.sizes import encode_output, fits
from shared.infra.tracing import span
from shared.log import keys
from shared.log.commit import Applied, Committer, NotReplicated, Outcome, Refused, Unit
from shared.log.events import (
    EventBase,
    ExecutionLog,
    ExecutionProgress,
    ExecutionRecovered,
    ExecutionStarted,
    StepCompleted,
    StepStarted,
)
from shared.log.events import (
    StepFailed as StepFailedEvent,
)
from shared.log.workflows import StepDef, WorkflowDef
from shared.service import metrics

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """The execution may not go on here: cancelled, or taken over by another executor."""


class HandedOver(Exception):
    """This executor is shutting down: the execution stops between steps and another executor resumes it."""


@dataclass(frozen=True, slots=True)
class RunEnv:
    """What every run of this executor shares."""

    committer: Committer
    actions: Actions
    consumer: str
    max_crashes: int
    max_output_bytes: int = 256 * 1024  # ORQ_MAX_OUTPUT_BYTES: a step's output, an execution's result
    # A step's rendered params may be as large as the largest input the API accepts (ORQ_MAX_BODY_BYTES), no
    # larger: templates can repeat an output many times, and the rendered value is encoded as a whole.
    max_params_bytes: int = 4 * 1024 * 1024
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    # What a ``workflow`` step needs to admit its child (shared/domain/executions/subworkflows.py).
    redis: Redis | None = None
    plans: dict[str, Plan] = field(default_factory=dict)
    partitions: int = 1
    definitions: PinnedDefinitions = field(default_factory=PinnedDefinitions)


# What Redis answers while it cannot take a write for a while: a connection lost, a cluster failing over or
# moving the partition's slot (TRYAGAIN, CLUSTERDOWN, a slot not covered), a write short of its replicas.
TRANSIENT = (RedisError, RedisClusterException)
OUTAGE_RETRY_S = 0.1  # the first wait before sending a commit again; doubles up to OUTAGE_RETRY_MAX_S
OUTAGE_RETRY_MAX_S = 2.0


class StepContext:
    """Handed to actions: identity of the step and a way to report logs and progress."""

    def __init__(self, run: ExecutionRun, step_index: int) -> None:
        self._run = run
        self.execution_id = run.job.execution_id
        self.tenant_id = run.job.tenant_id
        self.step_index = step_index
        self.attempt = run.attempt

    async def log(self, message: str, level: str = "info") -> None:
        event = ExecutionLog(tenant_id=self.tenant_id, aggregate_id=self.execution_id, ts=now_ms(),
                             step_index=self.step_index, message=message, level=level)
        self._run.env.committer.submit(self._run.fenced().event(event))

    async def progress(self, percent: float, message: str | None = None) -> None:
        event = ExecutionProgress(tenant_id=self.tenant_id, aggregate_id=self.execution_id, ts=now_ms(),
                                  step_index=self.step_index, percent=max(0.0, min(100.0, percent)), message=message)
        self._run.env.committer.submit(self._run.fenced().event(event))


class ExecutionRun:
    """One attempt at an execution, from its start commit to its last."""

    def __init__(self, job: Job, env: RunEnv) -> None:
        self.job = job
        self.env = env
        self.attempt = job.state.attempt
        self.cancel_requested = False
        self.handed_over = False
        self.finishing = False  # its last commit (which acks the entry) is on its way
        self._seq = job.state.seq  # lifecycle commits so far (see _guarded)

    # --- units ----------------------------------------------------------------------------------------------
    def fenced(self) -> Unit:
        """A unit that applies only while the execution is still handed out to this run."""
        return Unit(self.job.p).require(self.job.state_key, FENCE, [self.job.fence], FENCE)

    def _guarded(self) -> Unit:
        """A lifecycle commit: fenced (whatever else changes the status, a cancel, a retry, a takeover, moves the
        fence on), and numbered: it requires the execution's ``seq`` to be the run's count and moves it on, so
        the same commit sent again after its reply was lost (a failover) is refused instead of applied twice."""
        expected = [str(self._seq), ""] if self._seq == 0 else [str(self._seq)]
        unit = self.fenced().require(self.job.state_key, SEQ, expected, SEQ)
        number(unit, self.job.state_key, self._seq + 1)
        return unit

    def _ids(self) -> dict[str, Any]:
        return {"tenant_id": self.job.tenant_id, "aggregate_id": self.job.execution_id}

    async def _commit(self, unit: Unit) -> None:
        outcome = await self._send(unit)
        if isinstance(outcome, Refused):
            raise RunStopped(f"{outcome.label} is {outcome.actual!r}")
        if isinstance(outcome, Applied):  # counted once committed: a refused unit ended nothing
            metrics.observe(unit)

    async def _send(self, unit: Unit) -> Outcome:
        """Commit ``unit``; while Redis cannot take it, wait and send it again (no deadline: the run holds its
        lease meanwhile, and losing it, a takeover or a cancel stops the run).

        Sent again, a lifecycle commit whose first send was applied (its reply lost) is refused by its ``seq``:
        that refusal means it is done. A commit applied but short of its replicas (``NotReplicated``) is not
        sent again: the run waits until the replicas confirm it. Crashing instead would count against the
        execution's crash limit and turn a long failover into dead letters."""
        delay = OUTAGE_RETRY_S
        sent = False
        while True:
            try:
                outcome = await self.env.committer.commit(unit)
            except NotReplicated as short:
                if short.outcome is None:
                    raise
                await self._until_replicated(short)
                outcome = short.outcome
            except TRANSIENT as exc:
                log.warning("execution %s: commit not taken (%s); sending it again in %.1fs",
                            self.job.execution_id, exc, delay, extra={"execution_id": self.job.execution_id})
                sent = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTAGE_RETRY_MAX_S)
                continue
            # Every unit sent here is a lifecycle commit (built by ``_guarded``): numbered.
            if isinstance(outcome, Applied):
                self._seq += 1
            elif sent and isinstance(outcome, Refused) and (outcome.label, outcome.actual) == (SEQ, str(self._seq + 1)):
                self._seq += 1  # the first send was applied
                return Applied([])
            return outcome

    async def _until_replicated(self, short: NotReplicated) -> None:
        delay = OUTAGE_RETRY_S
        while True:
            log.warning("execution %s: %s; waiting for the replicas", self.job.execution_id, short,
                        extra={"execution_id": self.job.execution_id})
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_RETRY_MAX_S)
            try:
                await self.env.committer.confirm_replicated(self.job.p)
                return
            except NotReplicated as again:
                short = again
            except TRANSIENT as exc:
                log.warning("execution %s: %s", self.job.execution_id, exc)

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run to an end (completed, retrying, dead-lettered) or until stopped."""
        with span("execution", execution_id=self.job.execution_id, tenant_id=self.job.tenant_id, attempt=self.attempt):
            await self._run()

    async def _run(self) -> None:
        try:
            if not await self._start():
                return
            assert self.job.definition is not None  # _start dead-letters a run without one
            await self._steps(self.job.definition)
        except HandedOver as handed:
            self.handed_over = True
            log.info("execution %s handed over %s", self.job.execution_id, handed,
                     extra={"execution_id": self.job.execution_id})
        except RunStopped as stop:
            log.info("execution %s stopped: %s", self.job.execution_id, stop,
                     extra={"execution_id": self.job.execution_id})

    async def _start(self) -> bool:
        job, key, ts = self.job, self.job.state_key, now_ms()
        if not job.fence:  # dispatch hands out only executions it found (and fenced); this is not one
            raise RunStopped("handed out without a fencing token")
        observed = job.state.status
        unit = self._guarded().require(key, "status", [observed.value if observed else ""], "status")  # as handed out
        if observed is Status.QUEUED:
            unit.hincrby(keys.queued(job.p), job.tenant_id, -1)
        if job.definition is None:  # its pinned definition is gone: nothing can ever run it
            self._dead_letter(unit, ts, "its pinned workflow definition is missing", reason="poison",
                              step=job.state.step)
            await self._commit(unit)
            return False
        if job.recovered:
            crashes = job.state.crash_count + 1
            job.state = record(unit, job.state, ExecutionRecovered(
                **self._ids(), ts=ts, crash_count=crashes, lost_executor=job.previous_owner,
                executor=self.env.consumer))
            if crashes > self.env.max_crashes:
                error = f"executor crashed {crashes} times running it: dead-lettered as poison"
                self._dead_letter(unit, ts, error, reason="poison", step=job.state.step)
                await self._commit(unit)
                return False
        definition = job.definition
        from_step = job.state.step
        first_start = job.state.started_at is None
        started: list[EventBase] = [ExecutionStarted(**self._ids(), ts=ts, attempt=self.attempt,
                                                     executor=self.env.consumer, from_step=from_step)]
        if from_step < len(definition.steps) and _runs_here(definition.steps[from_step]):
            started.append(self._step_started(definition, from_step, ts))  # starts with the execution: one commit less
        job.state = record(unit, job.state, *started)
        if job.state.parked:  # resumed after a robot step or a child: no longer parked
            job.state = clear_parked(unit, job.state)
        await self._commit(unit)
        if first_start and job.state.queued_at:
            metrics.queue_wait(job.state.queued_at, ts)
        return True

    async def _steps(self, definition: WorkflowDef) -> None:
        params = self.job.params()
        outputs = self.job.outputs()
        last = len(definition.steps) - 1
        first = self.job.state.step
        if first > last:  # nothing left to run (resumed after its last step): just finish
            await self._commit(self._complete(self._guarded(), outputs.get(last)))
            return
        for index in range(first, last + 1):
            if self.env.draining.is_set():
                raise HandedOver(f"before step {index}")
            step = definition.steps[index]
            t0 = time.perf_counter()
            if step.runs_on is not None:
                if await self._offer(definition, index, params, outputs):
                    return  # parked: a robot runs the step, an executor goes on after it
                continue  # its params could not be rendered: the step failed and was let pass
            if index > first and _runs_here(step):
                # Not numbered (no ``seq``): sent once, never waited for, while the next commit is.
                self.env.committer.submit(self.fenced().event(self._step_started(definition, index, now_ms())))
            try:
                if step.action == "workflow":
                    child = await self._start_child(definition, index, params, outputs)
                    if child is None:
                        return  # parked until the child ends
                    output = child
                else:
                    output = await self._run_step(index, definition, params, outputs)
                self._encode_output(output)  # refuses an output too large or not serialisable
            except (StepFailed, msgspec.EncodeError) as exc:
                error = exc.message if isinstance(exc, StepFailed) else f"step output is not serialisable: {exc}"
                duration = int((time.perf_counter() - t0) * 1000)
                if await self._step_failed(definition, index, error, duration, outputs):
                    return
                continue
            duration = int((time.perf_counter() - t0) * 1000)
            outputs[index] = output
            unit = self._guarded()
            self.job.state = record(unit, self.job.state, StepCompleted(
                **self._ids(), ts=now_ms(), step_index=index, output=output, duration_ms=duration))
            if index == last:
                self._complete(unit, output)
            await self._commit(unit)

    def _encode_output(self, output: Any) -> bytes:
        return encode_output(output, self.env.max_output_bytes)

    def _step_started(self, definition: WorkflowDef, index: int, ts: int) -> StepStarted:
        step = definition.steps[index]
        return StepStarted(**self._ids(), ts=ts, step_index=index, action=step.action, label=step.label,
                           attempt=self.attempt)

    async def _run_step(self, index: int, definition: WorkflowDef, params: dict[str, Any],
                        outputs: dict[int, Any]) -> Any:
        """Run one action; whatever goes wrong inside it (a timeout, a plug-in's bug) fails the step."""
        step = definition.steps[index]
        with span("step", execution_id=self.job.execution_id, step_index=index, action=step.action):
            return await self._run_action(step, index, params, outputs)

    async def _run_action(self, step: StepDef, index: int, params: dict[str, Any], outputs: dict[int, Any]) -> Any:
        try:
            parsed = self.env.actions.parse(step.action, self._render(step, params, outputs))
            runner = self.env.actions.runner(step.action)
            if step.timeout_s is None:
                return await runner(parsed, StepContext(self, index))
            async with asyncio.timeout(step.timeout_s):
                return await runner(parsed, StepContext(self, index))
        except StepFailed:
            raise
        except TimeoutError:
            raise StepFailed(f"step timed out after {step.timeout_s}s") from None
        except Exception as exc:  # an action is foreign code: its error is the step's failure, not ours
            raise StepFailed(f"{type(exc).__name__}: {exc}") from exc

    # --- parking: a robot step, a child execution ------------------------------------------------------------
    def _park(self, unit: Unit) -> Unit:
        """The execution leaves this executor without ending: its entry waits on the ``parked`` consumer and its
        concurrency slot is freed; whoever ends the wait puts it back on the ``due`` index."""
        self.finishing = True
        unit.claim(self.job.stream, keys.GROUP_EXECUTOR, keys.CONSUMER_PARKED, self.job.entry_id)
        return execution_ops.release(unit, self.job.p, self.job.tenant_id, self.job.execution_id)

    def _render(self, step: StepDef, params: dict[str, Any], outputs: dict[int, Any]) -> Any:
        rendered = render(step.params, params, outputs)
        if not fits(rendered, self.env.max_params_bytes):
            raise StepFailed(f"params_too_large: the step's rendered params are over ORQ_MAX_BODY_BYTES="
                             f"{self.env.max_params_bytes} bytes")
        return rendered

    async def _offer(self, definition: WorkflowDef, index: int, params: dict[str, Any],
                     outputs: dict[int, Any]) -> bool:
        """Offer step ``index`` to the robots of its pool and park; False when its params could not be rendered
        (the step failed then: the run went on past it or ended, as its ``on_error`` says)."""
        step = definition.steps[index]
        try:
            rendered = self._render(step, params, outputs)
            if step.action in self.env.actions.params:  # an action the robot brings is checked by the robot
                self.env.actions.parse(step.action, rendered)
        except StepFailed as exc:
            if await self._step_failed(definition, index, exc.message, 0, outputs):
                return True
            return False
        offer = robot_tasks.Offer(self.job.p, self.job.tenant_id, self.job.execution_id, self.job.priority, index,
                                  step, self.attempt, rendered)
        unit = self._guarded()
        robot_tasks.offer(unit, offer, now_ms())
        await self._commit(self._park(unit))
        return True

    async def _start_child(self, definition: WorkflowDef, index: int, params: dict[str, Any],
                           outputs: dict[int, Any]) -> Any:
        """Start the child of a ``workflow`` step. With ``wait`` the run parks (None); without, the step's
        output is the child's id."""
        assert self.env.redis is not None, "a workflow step needs the executor's Redis client"
        step = definition.steps[index]
        wanted: WorkflowParams = self.env.actions.parse(step.action, self._render(step, params, outputs))
        ts = now_ms()
        child = await subworkflows.admit_child(
            self.env.redis, self.env.definitions, self.env.plans, p=self.job.p, partitions=self.env.partitions,
            parent=self.job.state, step_index=index, params=wanted, now_ms=ts)
        unit = self._guarded().absorb(child.unit)
        if wanted.wait:
            self.job.state = subworkflows.wait_for(unit, self.job.state, step_index=index,
                                                   child_id=child.execution_id, now_ms=ts)
            self._park(unit)
        outcome = await self._send(unit)
        if isinstance(outcome, Refused):
            if outcome.label == FENCE:
                raise RunStopped(f"{outcome.label} is {outcome.actual!r}")
            self.finishing = False
            raise StepFailed(f"{outcome.label}: the child execution could not be queued")
        return None if wanted.wait else {"execution_id": child.execution_id}

    async def _step_failed(self, definition: WorkflowDef, index: int, error: str, duration: int,
                           outputs: dict[int, Any]) -> bool:
        """A step failed: let it pass (``on_error: continue``; False) or end the attempt (True)."""
        if definition.steps[index].on_error != "continue":
            await self._fail(definition, index, error, duration)
            return True
        unit = self._guarded()
        self.job.state = record(unit, self.job.state, StepFailedEvent(
            **self._ids(), ts=now_ms(), step_index=index, error=error, duration_ms=duration, attempt=self.attempt,
            continued=True))
        await self._commit(unit)
        if index == len(definition.steps) - 1:
            await self._commit(self._complete(self._guarded(), outputs.get(index - 1)))
            return True
        return False

    # --- endings --------------------------------------------------------------------------------------------
    def _attempt(self) -> outcomes.Attempt:
        assert self.job.definition is not None
        return outcomes.Attempt(self.job.state, outcomes.max_attempts(self.job.state, self.job.definition))

    def _ending(self) -> outcomes.Ending:
        def backoff(unit: Unit) -> None:
            unit.claim(self.job.stream, keys.GROUP_EXECUTOR, keys.CONSUMER_BACKOFF, self.job.entry_id)

        return outcomes.Ending(end=self._end, backoff=backoff)

    def _end(self, unit: Unit) -> None:
        """The hand-out ends with this commit: its work entry goes, its concurrency slot is freed."""
        self.finishing = True
        # The fence guarantees the entry is still this run's: ack it by id, no lookup.
        unit.ack(self.job.stream, keys.GROUP_EXECUTOR, self.job.entry_id)
        forget_work(unit, self.job.state_key)
        execution_ops.release(unit, self.job.p, self.job.tenant_id, self.job.execution_id)

    def _complete(self, unit: Unit, result: Any) -> Unit:
        self.job.state = outcomes.complete(unit, self._attempt(), now_ms(), result, ending=self._ending())
        return unit

    async def _fail(self, definition: WorkflowDef, index: int, error: str, duration: int) -> None:
        self.finishing = True
        unit = self._guarded()
        self.job.state = outcomes.fail_step(unit, self._attempt(), definition, index, error, now_ms(),
                                            duration_ms=duration, ending=self._ending())
        await self._commit(unit)

    def _dead_letter(self, unit: Unit, ts: int, error: str, *, reason: str, step: int) -> None:
        self.job.state = outcomes.dead_letter(unit, outcomes.Attempt(self.job.state, 1), ts, error, reason=reason,
                                              step=step, ending=self._ending())


def _runs_here(step: StepDef) -> bool:
    """An executor runs the step (a ``runs_on`` step is announced by its offer, not started here)."""
    return step.runs_on is None
