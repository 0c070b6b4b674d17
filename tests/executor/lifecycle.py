"""A rig for lifecycle tests: real executors on the real Redis, driven one protocol step at a time.

Each :class:`Node` is an :class:`Executor` whose loops are not started: the test calls the same methods the
loops call (dispatch, take due retries, take expired entries, renew leases, hand over) in whatever order it
wants, and steps with the ``gate`` action wait until the test opens them. A crash drops a node's in-memory
state without a single commit, as ``kill -9`` does. :func:`check_invariants` states the lifecycle invariants
of docs/architecture.md against what Redis holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from services.executor.worker import Executor
from shared.domain import commit_script
from shared.domain.actions.runtime import Actions
from shared.domain.actions.schemas import ActionContext
from shared.infra.errors import StepFailed
from shared.infra.plans import Plan, default_plans
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from shared.log.consumer import records_of
from tests.helpers import REDIS_URL

LEASE_S = 1.0
# Set an entry's idle time, only if it is still pending to that consumer (the clock seam of leases).
_AGE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 1 and p[1][2] == ARGV[2] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
end
return 0
"""
PLANS = {
    **default_plans(),
    # Two at a time, no rate limit: the concurrency limit is reached often in a short test.
    "tight": Plan(name="tight", monthly_quota=0, rate_per_minute=0, max_concurrent=2, default_priority=5,
                  min_priority=1, weight=1, max_backlog=0),
    "single": Plan(name="single", monthly_quota=0, rate_per_minute=0, max_concurrent=1, default_priority=5,
                   min_priority=1, weight=1, max_backlog=0),
}


class GateParams(msgspec.Struct, frozen=True):
    pass


class Gate:
    """A plug-in action that waits until the test opens it, then succeeds or fails as the test says."""

    params = GateParams

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[bool]]] = defaultdict(list)
        self.blocked: set[asyncio.Task[Any]] = set()

    async def run(self, _params: GateParams, ctx: ActionContext) -> dict[str, bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[ctx.execution_id].append(future)
        task = asyncio.current_task()
        assert task is not None
        self.blocked.add(task)
        try:
            ok = await future
        finally:
            self.blocked.discard(task)
            waiting = self._waiting[ctx.execution_id]
            if future in waiting:
                waiting.remove(future)
        if not ok:
            raise StepFailed("the gate said no")
        return {"opened": True}

    def waiting(self) -> list[str]:
        """Executions with a step at the gate now."""
        return sorted(e for e, futures in self._waiting.items() if any(not f.done() for f in futures))

    def open(self, execution_id: str, ok: bool) -> None:
        for future in self._waiting.get(execution_id, []):
            if not future.done():
                future.set_result(ok)


@dataclass
class Node:
    """One executor process, driven by hand."""

    executor: Executor
    committer: Committer
    alive: bool = True
    draining: bool = False
    dropped: set[str] = field(default_factory=set)  # runs that died inside it: its own orphans

    @property
    def name(self) -> str:
        return self.executor.name

    async def dispatch(self) -> None:
        ex = self.executor
        if ex.free > 0:
            ex._admit(await ex._call("next", ex._split(ex.free, await ex._best_partitions())))

    async def take_due(self) -> None:
        await self.executor._take_due()

    async def take_expired(self) -> None:
        await self.executor._take_expired()

    async def renew(self) -> None:
        await self.executor._renew_leases()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for task, _ in self.executor._running.values()]

    def crash(self) -> None:
        """``kill -9``: every run stops where it is, nothing is committed or acked."""
        for task in self.tasks():
            task.cancel()
        self.executor._running.clear()
        self.executor._held.clear()
        self.alive = False

    def drop_run(self, execution_id: str) -> bool:
        """One run dies inside a live executor (a dropped connection mid-commit): its entry is left pending."""
        found = self.executor._running.get(execution_id)
        if found is None:
            return False
        found[0].cancel()
        self.dropped.add(execution_id)
        return True

    def sigterm(self) -> None:
        """Take nothing new; runs stop before their next step."""
        self.executor.env.draining.set()
        self.draining = True

    async def hand_over(self) -> None:
        """The end of the grace period: whatever is still held goes to the other executors at once."""
        ex = self.executor
        jobs = [run.job for _, run in ex._running.values()] + [job for _, _, job in ex._held]
        for task in self.tasks():
            task.cancel()
        await asyncio.gather(*self.tasks(), return_exceptions=True)
        await ex._hand_over(jobs)
        ex._running.clear()
        ex._held.clear()
        self.alive = False


@dataclass
class Rig:
    redis: Redis
    client: httpx.AsyncClient
    partitions: int
    gate: Gate = field(default_factory=Gate)
    nodes: list[Node] = field(default_factory=list)

    async def start_node(self, slots: int = 3, lease_s: float = LEASE_S, max_crashes: int = 3,
                         committer: Committer | None = None) -> Node:
        settings = replace(Settings(redis_url=REDIS_URL, partitions=self.partitions), plans=PLANS,
                           executor_concurrency=slots, lease_s=lease_s, max_crashes=max_crashes)
        committer = committer or commit_script.committer(self.redis)
        actions = Actions(self.client, plugins={"gate": self.gate})
        node = Node(Executor(settings, self.redis, committer, actions, name=f"node-{len(self.nodes)}"), committer)
        await node.executor._ensure_groups()
        self.nodes.append(node)
        return node

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    async def settle(self, timeout: float = 5.0) -> None:
        """Let every run go as far as it can: until each is done or waiting at the gate, and nothing is being
        committed."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(0.005)
            busy = any(
                not task.done() and task not in self.gate.blocked for n in self.nodes for task in n.tasks()
            ) or not all(n.committer.idle for n in self.nodes)
            quiet = 0 if busy else quiet + 1
            if time.monotonic() > deadline:
                raise AssertionError("runs did not settle")

    async def expire(self, node: Node, only: set[str] | None = None) -> None:
        """Make the entries ``node`` holds (of the executions ``only``, if given) look idle past the lease, as
        if a whole lease went by unrenewed."""
        lease_ms = int(node.executor.settings.lease_s * 1000) + 1
        for p in range(self.partitions):
            for stream in keys.work_streams(p):
                for entry in await self.redis.xpending_range(stream, keys.GROUP_EXECUTOR, "-", "+", 1000,
                                                             consumername=node.name):
                    entry_id = _s(entry["message_id"])
                    if only is not None:
                        found = await self.redis.xrange(stream, entry_id, entry_id)
                        if not found or _s(found[0][1][b"e"]) not in only:
                            continue
                    await self.redis.eval(_AGE, 1, stream, keys.GROUP_EXECUTOR, node.name,  # type: ignore[misc]
                                          entry_id, lease_ms)

    async def close(self) -> None:
        for node in self.nodes:
            for task in node.tasks():
                task.cancel()
            await asyncio.gather(*node.tasks(), return_exceptions=True)
            await node.committer.close()


# --- invariants -------------------------------------------------------------------------------------------------
RUN_EVENTS = frozenset({"execution.started", "step.started", "step.completed", "step.failed", "execution.completed",
                        "execution.retrying", "execution.failed", "execution.progress", "execution.log"})
ENDINGS = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _scan(redis: Redis, pattern: str) -> list[str]:
    return sorted([_s(k) async for k in redis.scan_iter(match=pattern, count=1000)])


async def executions(redis: Redis, p: int) -> dict[str, dict[str, str]]:
    prefix = keys.execution(p, "")
    found = {}
    for key in await _scan(redis, prefix + "*"):
        found[key[len(prefix):]] = {_s(k): _s(v) for k, v in (await redis.hgetall(key)).items()
                                    if not _s(k).startswith("out:") and _s(k) != "params"}
    return found


async def check_invariants(redis: Redis, p: int) -> None:
    """Assert every lifecycle invariant of partition ``p`` (docs/architecture.md, "Lifecycle invariants")."""
    states = await executions(redis, p)
    await _check_counters(redis, p, states)
    await _check_places(redis, p, states)
    await _check_history(redis, p)


async def _check_counters(redis: Redis, p: int, states: dict[str, dict[str, str]]) -> None:
    owned: Counter[str] = Counter(s["tenant"] for s in states.values() if s.get("owner"))
    queued: Counter[str] = Counter(s["tenant"] for s in states.values() if s.get("status") == "queued")
    running = {_s(k): int(v) for k, v in (await redis.hgetall(keys.running(p))).items()}
    counted = {_s(k): int(v) for k, v in (await redis.hgetall(keys.queued(p))).items()}
    for tenant in set(owned) | set(running):
        assert running.get(tenant, 0) == owned[tenant], (
            f"running counter of {tenant} is {running.get(tenant, 0)}, {owned[tenant]} executions are handed out")
    for tenant in set(queued) | set(counted):
        assert counted.get(tenant, 0) == queued[tenant], (
            f"queued counter of {tenant} is {counted.get(tenant, 0)}, {queued[tenant]} executions are queued")


async def _check_places(redis: Redis, p: int, states: dict[str, dict[str, str]]) -> None:
    places, pending = await _places(redis, p)
    due = {_s(m): int(s) for m, s in await redis.zrange(keys.due(p), 0, -1, withscores=True)}
    for execution_id, where in places.items():
        assert len(where) <= 1, f"execution {execution_id} is in {len(where)} places: {where}"
    tasks = await _tasks(redis, p)
    for task_id, execution_id in tasks.items():
        s = states.get(execution_id, {})
        assert s.get("status") == "running" and s.get("parked") == "robot" and s.get("task") == task_id, (
            f"task {task_id} is live but its execution {execution_id} is {s.get('status')} parked "
            f"{s.get('parked')!r} on {s.get('task')!r}")
    for execution_id, s in states.items():
        _check_place(p, execution_id, s, places.get(execution_id, []), pending, due, tasks)


async def _tasks(redis: Redis, p: int) -> dict[str, str]:
    """Live robot tasks (task id -> execution id): each is in its pool's offers or the lease index, not both."""
    found: dict[str, str] = {}
    offered = {_s(m) for key in await _scan(redis, keys.prefix(p) + "offers:*") for m in await redis.zrange(key, 0, -1)}
    leased = {_s(m) for m in await redis.zrange(keys.task_leases(p), 0, -1)}
    assert not offered & leased, f"tasks both offered and claimed: {offered & leased}"
    for task_id in offered | leased:
        execution_id = _s(await redis.hget(keys.task(p, task_id), "execution_id"))
        assert execution_id, f"task {task_id} is indexed but has no hash"
        found[task_id] = execution_id
    return found


async def _places(redis: Redis, p: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Where each execution id is (backlogs, parked lists, work entries), and each pending entry's consumer."""
    places: dict[str, list[str]] = defaultdict(list)
    for key in await _scan(redis, keys.prefix(p) + "backlog:*") + await _scan(redis, keys.prefix(p) + "parked:*"):
        for member in await redis.lrange(key, 0, -1):
            places[_s(member)].append(key)
    pending: dict[str, str] = {}  # "stream/entry id" -> consumer (entry ids are unique per stream only)
    for stream in keys.work_streams(p):
        for entry in await redis.xpending_range(stream, keys.GROUP_EXECUTOR, "-", "+", 100_000):
            pending[f"{stream}/{_s(entry['message_id'])}"] = _s(entry["consumer"])
        for entry_id, fields in await redis.xrange(stream):
            execution_id, where = _s(fields[b"e"]), f"{stream}/{_s(entry_id)}"
            places[execution_id].append(where)
            assert where in pending, f"work entry {where} of {execution_id} is not pending"
    return places, pending


def _check_place(p: int, execution_id: str, s: dict[str, str], where: list[str],
                 pending: dict[str, str], due: dict[str, int], tasks: dict[str, str]) -> None:
    status, work_id = s.get("status"), s.get("work_id")
    if work_id:
        assert where == [f"{s['work_stream']}/{work_id}"], f"{execution_id}: work_id {work_id} but in {where}"
    if status == "queued" and not work_id:
        backlog, parked = keys.backlog(p, int(s["priority"]), s["tenant"]), keys.parked(p, s["workflow_id"])
        assert len(where) == 1 and where[0] in (backlog, parked), f"queued {execution_id} in {where}"
    elif status == "running" and s.get("parked"):  # waits for a robot, or to go on with its next step
        _check_parked(p, execution_id, s, pending, due, tasks)
    elif status in ("queued", "running") or (status == "retrying" and s.get("owner")):  # handed out
        assert work_id, f"{status} {execution_id} has no work entry"
        consumer = pending[f"{s['work_stream']}/{work_id}"]
        assert s.get("owner") and consumer in (s["owner"], keys.CONSUMER_RELEASED), (
            f"{status} {execution_id} is owned by {s.get('owner')} but pending to {consumer}")
    elif status == "retrying":
        assert work_id and pending[f"{s['work_stream']}/{work_id}"] == keys.CONSUMER_BACKOFF, (
            f"retrying {execution_id} not in backoff")
        assert not s.get("owner"), f"retrying {execution_id} still counts as running"
        # Due at its retry time, or later when its tenant had no room at that time.
        assert due.get(execution_id, -1) >= int(s["retry_at"]), f"retrying {execution_id} is not in the due index"
    else:
        assert not where and not s.get("owner"), f"{status} {execution_id} still holds {where} {s.get('owner')}"
    if status != "retrying" and s.get("parked") != "resume":
        assert execution_id not in due, f"{status} {execution_id} is waiting to retry"
    if status != "running":
        assert not s.get("parked"), f"{status} {execution_id} is still parked ({s.get('parked')})"
    if s.get("parked") != "robot":
        assert not s.get("task"), f"{status} {execution_id} still holds task {s.get('task')}"


def _check_parked(p: int, execution_id: str, s: dict[str, str], pending: dict[str, str], due: dict[str, int],
                  tasks: dict[str, str]) -> None:
    """Parked: its entry pending to the ``parked`` consumer, no slot held; on a robot, exactly one live task
    (offered or claimed, never both); ready to go on, in the due index."""
    assert not s.get("owner"), f"parked {execution_id} still counts as running"
    assert s.get("work_id") and pending[f"{s['work_stream']}/{s['work_id']}"] == keys.CONSUMER_PARKED, (
        f"parked {execution_id} has its entry elsewhere")
    if s["parked"] == "robot":
        mine = [t for t, owner in tasks.items() if owner == execution_id]
        assert mine == [s.get("task")], f"{execution_id} parked on task {s.get('task')} but holds {mine}"
    else:
        assert s["parked"] == "resume" and execution_id in due, f"{execution_id} parked {s['parked']} not due"


async def _check_history(redis: Redis, p: int) -> None:
    """Per execution and series of attempts (a retry or DLQ retry starts a new series): nothing of a run after
    its cancel, one ending, each step completed at most once per attempt."""
    series: dict[str, dict[str, Any]] = {}
    for record in records_of(await redis.xrange(keys.log(p))):
        if not record.type.startswith(("execution.", "step.")):
            continue
        event = record.event()
        run = series.setdefault(event.aggregate_id, {"cancelled": False, "ended": 0, "attempt": 1, "done": set()})
        if record.type == "execution.requeued":
            series[event.aggregate_id] = {"cancelled": False, "ended": 0, "attempt": 1, "done": set()}
            continue
        if record.type in RUN_EVENTS:
            assert not run["cancelled"], f"{record.type} of {event.aggregate_id} after it was cancelled"
        if record.type == "execution.started":
            run["attempt"] = event.attempt  # type: ignore[union-attr]
        if record.type == "step.completed":
            done = (run["attempt"], event.step_index)  # type: ignore[union-attr]
            assert done not in run["done"], f"step {done} of {event.aggregate_id} completed twice"
            run["done"].add(done)
        if record.type in ENDINGS:
            run["ended"] += 1
            assert run["ended"] == 1, f"{event.aggregate_id} ended {run['ended']} times in one series"
        if record.type == "execution.cancelled":
            run["cancelled"] = True
