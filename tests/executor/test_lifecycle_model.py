"""Model-based test of the execution lifecycle: hypothesis explores interleavings of commands, executors'
protocol steps and faults on the real Redis, and after every step the lifecycle invariants must hold.

Executors are real (:mod:`tests.executor.lifecycle`), driven one protocol step at a time; their steps wait at
a gate the test opens. The clock seam for leases is Redis's own idle time, set with ``XCLAIM … IDLE``. At the
end every live execution must reach exactly one ending once the faults stop.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.api import commands
from services.api.context import ApiContext
from services.executor.robot_leases import RobotLeases
from shared.domain import commit_script
from shared.domain.aggregates import WorkflowState
from shared.domain.executions.admission import Run, admission_unit
from shared.domain.executions.commands import workflow_delete_unit, workflow_pause_unit
from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import EVOLVED_FIELDS, ExecutionState, evolve, new_execution, read_execution
from shared.domain.robots import tasks as robot_tasks
from shared.infra.clock import new_id, now_ms
from shared.infra.errors import Conflict, NotFound
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied
from shared.log.consumer import records_of
from shared.log.events import ExecutionQueued
from shared.log.redis import connect
from shared.log.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef
from tests.executor.lifecycle import PLANS, Node, Rig, check_invariants, executions
from tests.executor.seed import PARTITIONS, seed_workflow, tenants_in_one_partition
from tests.helpers import REDIS_URL

pytestmark = pytest.mark.slow
TENANTS = tenants_in_one_partition(2, prefix="model")
P = keys.partition_of(TENANTS[0], PARTITIONS)
MAX_NODES = 4
MAX_EXECUTIONS = 12
POOL = "desk"
ROBOTS = ("robot-a", "robot-b")


def _definition(name: str, retry_from: str, robot: bool = False) -> WorkflowDef:
    # With ``robot``, the middle step runs on a robot of pool "desk": the run parks, a robot rule takes it.
    middle = StepDef(action="noop", runs_on=POOL) if robot else StepDef(action="noop")
    return WorkflowDef(
        name=name,
        steps=[StepDef(action="gate"), middle, StepDef(action="gate")],
        retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=1)),
        retry_from=retry_from,  # type: ignore[arg-type]
    )


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = connect(REDIS_URL)
        self.client = httpx.AsyncClient()
        self.committer = commit_script.committer(self.redis)
        # Every tenant of the model is in partition 0; executors that serve only that partition spend every
        # call of the rules there.
        self.rig = Rig(self.redis, self.client, 1)
        self.workflows: list[tuple[WorkflowState, WorkflowDef]] = []
        self.ids: list[str] = []
        self.claimed: list[tuple[str, str, int]] = []  # (robot, task id, partition) a robot believes it holds
        self.leases = RobotLeases(self.redis, self.committer, PinnedDefinitions(),
                                  Settings(redis_url=REDIS_URL, partitions=PARTITIONS, max_crashes=3))
        ctx = ApiContext(Settings(redis_url=REDIS_URL, partitions=PARTITIONS, plans=PLANS), self.redis,
                         cast(Any, None), self.committer, {}, cast(Any, None), cast(Any, None))
        self.ctx = ctx

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def setup(self) -> None:
        async def seed() -> None:
            await self.redis.flushdb()
            for tenant, plan, retry_from, robot in ((TENANTS[0], "tight", "failed_step", True),
                                                    (TENANTS[1], "enterprise", "start", False),
                                                    (TENANTS[1], "enterprise", "failed_step", True)):
                definition = _definition(f"wf-{tenant}", retry_from, robot)
                workflow = await seed_workflow(self.committer, tenant, definition, plan=plan)
                self.workflows.append((workflow, definition))
            await self.rig.start_node()
            await self.rig.start_node()

        self.run(seed())

    def teardown(self) -> None:
        try:
            if self.workflows:
                self.run(self._finish_everything())
        finally:
            self.run(self.rig.close())
            self.run(self.committer.close())
            self.run(self.client.aclose())
            self.run(self.redis.aclose())
            self.loop.close()

    # --- helpers ----------------------------------------------------------------------------------------------
    def _tenant(self, execution_id: str) -> Any:
        async def read() -> Any:
            from shared.domain.aggregates import read_tenant

            raw = await self.redis.hget(keys.execution(P, execution_id), "tenant")
            return await read_tenant(self.redis, PARTITIONS, raw.decode())

        return self.run(read())

    def _node(self, index: int, *, draining_ok: bool = False) -> Node | None:
        live = [n for n in self.rig.live() if draining_ok or not n.draining]
        return live[index % len(live)] if live else None

    async def _step(self, node: Node, action: str) -> None:
        await getattr(node, action)()
        await self.rig.settle()

    # --- commands ---------------------------------------------------------------------------------------------
    @precondition(lambda self: len(self.ids) < MAX_EXECUTIONS)
    @rule(which=st.integers(0, 2), priority=st.sampled_from([3, 5]))
    def execute(self, which: int, priority: int) -> None:
        workflow, definition = self.workflows[which]
        plan = PLANS["tight" if which == 0 else "enterprise"]
        run = Run(new_id(), priority, {})
        unit = admission_unit(p=P, tenant_id=workflow.tenant_id, plan=plan, workflow=workflow, definition=definition,
                              runs=[run], now_ms=now_ms())
        if isinstance(self.run(self.committer.commit(unit)), Applied):
            self.ids.append(run.execution_id)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        execution_id = data.draw(st.sampled_from(self.ids))
        try:
            self.run(commands.cancel(self.ctx, self._tenant(execution_id), execution_id))
        except (Conflict, NotFound):
            pass
        self.run(self.rig.settle())

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        execution_id = data.draw(st.sampled_from(self.ids))
        try:
            self.run(commands.retry(self.ctx, self._tenant(execution_id), execution_id, from_dlq=None))
        except (Conflict, NotFound):
            pass

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), priority=st.sampled_from([3, 5, 7]))
    def change_priority(self, data: st.DataObject, priority: int) -> None:
        execution_id = data.draw(st.sampled_from(self.ids))
        try:
            self.run(commands.change_priority(self.ctx, self._tenant(execution_id), execution_id, priority))
        except (Conflict, NotFound):
            pass

    @rule(which=st.integers(0, 2), paused=st.booleans())
    def pause(self, which: int, paused: bool) -> None:
        workflow = self.workflows[which][0]
        self.run(self.committer.commit(workflow_pause_unit(p=P, tenant_id=workflow.tenant_id, workflow_id=workflow.id,
                                                           paused=paused, now_ms=now_ms())))

    @precondition(lambda self: len(self.ids) >= 3)
    @rule()
    def delete_workflow(self) -> None:
        """Only the third workflow is ever deleted, so the others can still be run."""
        workflow = self.workflows[2][0]
        self.run(self.committer.commit(workflow_delete_unit(p=P, tenant_id=workflow.tenant_id,
                                                            workflow_id=workflow.id, now_ms=now_ms())))

    # --- executors --------------------------------------------------------------------------------------------
    def _executor_step(self, index: int, action: str) -> None:
        node = self._node(index, draining_ok=action == "renew")
        if node is not None:
            if action == "take_due":
                self.run(asyncio.sleep(0.002))  # retries are due 1 ms after they fail
            self.run(self._step(node, action))

    @rule(index=st.integers(0, MAX_NODES))
    def dispatch(self, index: int) -> None:
        self._executor_step(index, "dispatch")

    @rule(index=st.integers(0, MAX_NODES))
    def take_due(self, index: int) -> None:
        self._executor_step(index, "take_due")

    @rule(index=st.integers(0, MAX_NODES))
    def take_expired(self, index: int) -> None:
        self._executor_step(index, "take_expired")

    @rule(index=st.integers(0, MAX_NODES))
    def renew(self, index: int) -> None:
        self._executor_step(index, "renew")

    @precondition(lambda self: self.rig.gate.waiting())
    @rule(data=st.data(), ok=st.booleans())
    def finish_step(self, data: st.DataObject, ok: bool) -> None:
        self.rig.gate.open(data.draw(st.sampled_from(self.rig.gate.waiting())), ok)
        self.run(self.rig.settle())

    # --- robots (shared/domain/robots/tasks.py, as the API's task routes call it) -------------------------------------
    @rule(robot=st.sampled_from(ROBOTS), tenant=st.sampled_from(TENANTS))
    def robot_takes(self, robot: str, tenant: str) -> None:
        claimed = self.run(robot_tasks.claim(self.redis, p=P, tenant_id=tenant, pool=POOL, robot_id=robot,
                                             now_ms=now_ms(), lease_ms=60_000))
        if claimed is not None:
            self.claimed.append((robot, claimed.task_id, P))

    @precondition(lambda self: self.claimed)
    @rule(data=st.data(), outcome=st.sampled_from(["complete", "fail", "heartbeat"]))
    def robot_reports(self, data: st.DataObject, outcome: str) -> None:
        """A robot reports on a task it believes it holds: applied once while it does, refused (409) after."""
        robot, task_id, p = data.draw(st.sampled_from(self.claimed))

        async def report() -> None:
            view = await robot_tasks.read_task(self.redis, p, task_id)
            if view.refusal(robot) is not None:
                return  # the route answers 409 and changes nothing
            definition = await PinnedDefinitions().read_key(self.redis, view.execution.def_key)
            assert definition is not None
            if outcome == "complete":
                unit = robot_tasks.complete_unit(view, robot, definition, now_ms=now_ms(), output={"ok": True})
            elif outcome == "fail":
                unit = robot_tasks.fail_unit(view, robot, definition, now_ms=now_ms(), error="screen not found")
            else:
                unit = robot_tasks.heartbeat_unit(view, robot, now_ms=now_ms(), lease_ms=60_000, progress=50.0,
                                                  message=None)
            await self.committer.commit(unit)

        self.run(report())

    @rule()
    def robot_leases_run_out(self) -> None:
        """Every claimed task's robot goes silent for a whole lease: the scan offers each again."""
        async def expire() -> None:
            for member in await self.redis.zrange(keys.task_leases(P), 0, -1):
                await self.redis.zadd(keys.task_leases(P), {member: 0})
            await self.leases.reoffer_expired()

        self.run(expire())

    # --- faults -----------------------------------------------------------------------------------------------
    @rule(index=st.integers(0, MAX_NODES))
    def crash(self, index: int) -> None:
        node = self._node(index, draining_ok=True)
        if node is not None:
            node.crash()
            self.run(self.rig.settle())

    @rule(index=st.integers(0, MAX_NODES), data=st.data())
    def drop_a_run(self, index: int, data: st.DataObject) -> None:
        """A run of a live executor dies (a dropped connection): the executor itself must take it back."""
        node = self._node(index)
        if node is not None and node.executor._running:
            node.drop_run(data.draw(st.sampled_from(sorted(node.executor._running))))
            self.run(self.rig.settle())

    @rule(index=st.integers(0, MAX_NODES))
    def lease_runs_out(self, index: int) -> None:
        """A whole lease passes without renewals for one executor (dead, paused, or cut off)."""
        nodes = self.rig.nodes
        if nodes:
            self.run(self.rig.expire(nodes[index % len(nodes)]))

    @rule(index=st.integers(0, MAX_NODES))
    def sigterm(self, index: int) -> None:
        node = self._node(index)
        if node is not None:
            node.sigterm()

    @rule(index=st.integers(0, MAX_NODES))
    def grace_ends(self, index: int) -> None:
        draining = [n for n in self.rig.live() if n.draining]
        if draining:
            self.run(draining[index % len(draining)].hand_over())
            self.run(self.rig.settle())

    @precondition(lambda self: len(self.rig.nodes) < MAX_NODES + 2)
    @rule()
    def start_executor(self) -> None:
        self.run(self.rig.start_node())

    # --- invariants -------------------------------------------------------------------------------------------
    @invariant()
    def lifecycle_invariants_hold(self) -> None:
        if self.workflows:
            self.run(check_invariants(self.redis, P))

    async def _robots_finish_everything(self) -> None:
        """Tasks claimed and abandoned are offered again; a robot takes and completes whatever is offered."""
        for member in await self.redis.zrange(keys.task_leases(P), 0, -1):
            await self.redis.zadd(keys.task_leases(P), {member: 0})
        await self.leases.reoffer_expired()
        for tenant in TENANTS:
            while task := await robot_tasks.claim(self.redis, p=P, tenant_id=tenant, pool=POOL, robot_id=ROBOTS[0],
                                                  now_ms=now_ms(), lease_ms=60_000):
                view = await robot_tasks.read_task(self.redis, P, task.task_id)
                definition = await PinnedDefinitions().read_key(self.redis, view.execution.def_key)
                assert definition is not None
                await self.committer.commit(robot_tasks.complete_unit(
                    view, ROBOTS[0], definition, now_ms=now_ms(), output=None))

    async def _finish_everything(self) -> None:
        """No more faults: resume what is paused, open every gate; every execution must reach one ending."""
        for workflow, _ in self.workflows:
            await self.committer.commit(workflow_pause_unit(p=P, tenant_id=workflow.tenant_id,
                                                            workflow_id=workflow.id, paused=False, now_ms=now_ms()))
        for node in self.rig.live():
            if node.draining:
                await node.hand_over()
        if not self.rig.live():
            await self.rig.start_node()
        for _ in range(200):
            states = await executions(self.redis, P)
            if all(s.get("status") in ("completed", "failed", "cancelled") for s in states.values()):
                break
            for execution_id in self.rig.gate.waiting():
                self.rig.gate.open(execution_id, True)
            await self._robots_finish_everything()
            # One executor does all the work, as under `orq dev`, preferably one with runs that died inside it:
            # it must take back its own orphans too.
            worker = next((n for n in self.rig.live() if n.dropped), self.rig.live()[0])
            for action in ("dispatch", "take_due", "take_expired", "renew"):
                await self._step(worker, action)
            for node in self.rig.nodes:
                if node is not worker:
                    await self.rig.expire(node)  # the others' leases run out
            await self.rig.expire(worker, only=worker.dropped)  # its orphans are renewed by nobody
            await asyncio.sleep(0.002)
            await check_invariants(self.redis, P)
        else:
            raise AssertionError(f"executions never ended: {await executions(self.redis, P)}")
        running = await self.redis.hgetall(keys.running(P))
        assert all(int(v) == 0 for v in running.values()), f"running counters left over: {running}"
        await _each_hash_is_the_fold_of_its_events(self.redis)


async def _each_hash_is_the_fold_of_its_events(redis: Any) -> None:
    """Whatever raced, every execution's hash holds what its events in the log say, no more, no less."""
    folded: dict[str, ExecutionState] = {}
    for record in records_of(await redis.xrange(keys.log(P))):
        event = record.event()
        if isinstance(event, ExecutionQueued):
            folded[event.aggregate_id] = new_execution(P, event.aggregate_id)
        if event.aggregate_id in folded:
            folded[event.aggregate_id] = evolve(folded[event.aggregate_id], event)
    for execution_id, expected in folded.items():
        state = await read_execution(redis, P, execution_id)
        assert state is not None
        wrong = {name: (getattr(state, name), getattr(expected, name)) for name in EVOLVED_FIELDS
                 if getattr(state, name) != getattr(expected, name)}
        assert not wrong, f"{execution_id}: hash differs from the fold of its events (hash, fold): {wrong}"


Lifecycle.TestCase.settings = settings(
    max_examples=int(os.environ.get("ORQ_MODEL_EXAMPLES", "150")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_lifecycle_model() -> None:
    Lifecycle.TestCase().runTest()
