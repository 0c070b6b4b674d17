"""Robots (DESIGN §10): the round trip of a ``runs_on`` step, and the tasks/s one API process serves.

Real processes: ``orq api`` (one) and two ``orq executor``. The 20 robots are loops in this process, each with
its own robot key: long poll ``tasks/next``, then ``complete`` at once with a tiny output. They speak the
protocol through aiohttp (``bench/http.py``), not the reference robot's httpx client: measured here, the httpx
robots spent ~4x the client CPU and capped the tasks/s row at about half of what the API served to aiohttp
ones, on the two cores the API shares with them. Times are the log's stream ids (Redis' clock), read as
``bench/latency.py`` does.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from redis.asyncio import Redis

from bench.common import PARTITIONS, Result, drained, env, fresh_redis, processes, wait_until
from bench.http import call, free_port, session, wait_ready
from shared.log import keys
from shared.log.consumer import records_of

ROBOTS = 20
POOL = "bench"
WAIT_S = 2.0  # long poll: short, so the robots stop soon after their work is done
RATE = 100  # executions/s offered during the round trip: well within what 20 robots take
SECONDS = 10.0
DRAIN = 3_000
ADMIN = "Bearer bench-admin"
OUTPUT = {"ok": True}


@dataclass(frozen=True, slots=True)
class _Tenant:
    id: str
    auth: str
    robot_keys: list[str]


async def _tenant(client: ClientSession) -> _Tenant:
    created = await call(client, "POST", "/api/tenants", {"name": "robots", "plan": "bench"}, ADMIN)
    auth = f"Bearer {created['api_key']}"
    robot_keys = []
    for n in range(ROBOTS):
        robot = await call(client, "POST", "/api/robots", {"name": f"robot-{n}", "pool": POOL}, auth)
        robot_keys.append(robot["robot_key"])
    return _Tenant(str(created["id"]), auth, robot_keys)


async def _workflow(client: ClientSession, auth: str, name: str, steps: list[dict[str, Any]]) -> str:
    workflow = await call(client, "POST", "/api/workflows", {"name": name, "steps": steps}, auth)
    return str(workflow["id"])


async def _robot(client: ClientSession, key: str, stop: asyncio.Event) -> None:
    """One robot: take a task, complete it at once, ask again, until ``stop``."""
    auth = f"Bearer {key}"
    while not stop.is_set():
        task = await call(client, "POST", "/api/robots/tasks/next", {"wait_s": WAIT_S}, auth)
        if task is not None:
            await call(client, "POST", f"/api/robots/tasks/{task['task_id']}/complete", {"output": OUTPUT}, auth)


@asynccontextmanager
async def _robots(base: str, robot_keys: list[str]) -> AsyncIterator[None]:
    """The robots run while the block runs. On leaving, each ends after its open long poll answers rather than
    dropping it: the server may still hand a dropped poll a task, which would then sit claimed by nobody until
    its lease runs out."""
    stop = asyncio.Event()
    async with session(base, len(robot_keys)) as client:
        loops = [asyncio.create_task(_robot(client, key, stop)) for key in robot_keys]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*loops)


async def _redis_now_id(redis: Redis) -> str:
    """A stream id at Redis' present moment: events logged from now on sort after it."""
    seconds, micros = await redis.time()
    return f"{seconds * 1000 + micros // 1000}-0"


async def _events(redis: Redis, since: str) -> list[tuple[int, str, Any]]:
    """``(ms, type, event)`` of every partition's log from ``since`` on."""
    out = []
    for p in range(PARTITIONS):
        for record in records_of(await redis.xrange(keys.log(p), min=since)):
            out.append((int(record.id.split("-")[0]), record.type, record.event()))
    return out


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def _round_trip(client: ClientSession, redis: Redis, base: str, tenant: _Tenant) -> list[Result]:
    """``RATE`` executions/s of [robot step, executor noop] for ``SECONDS``: offered → claimed → completed →
    the next step started, per execution."""
    workflow = await _workflow(client, tenant.auth, "robot-then-noop",
                               [{"action": "noop", "runs_on": POOL}, {"action": "noop"}])
    since = await _redis_now_id(redis)
    total = int(RATE * SECONDS)
    async with _robots(base, tenant.robot_keys):
        calls = []
        start = time.perf_counter()
        for n in range(total):
            calls.append(asyncio.create_task(
                call(client, "POST", f"/api/workflows/{workflow}/execute", {}, tenant.auth)))
            delay = start + (n + 1) / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*calls)
        await wait_until(lambda: drained(redis), timeout=60)
    offered: dict[str, int] = {}
    claimed: dict[str, int] = {}
    completed: dict[str, int] = {}
    next_started: dict[str, int] = {}
    for ms, kind, event in await _events(redis, since):
        execution = event.aggregate_id
        if kind == "step.offered":
            offered.setdefault(execution, ms)
        elif kind == "step.claimed":
            claimed.setdefault(execution, ms)
        elif kind == "step.completed" and event.step_index == 0:
            completed.setdefault(execution, ms)
        elif kind == "step.started" and event.step_index == 1:
            next_started.setdefault(execution, ms)
    ids = [i for i in offered if i in claimed and i in completed and i in next_started]
    if len(ids) < total:
        raise RuntimeError(f"only {len(ids)} of {total} executions went offered → next step started")
    round_trips = [next_started[i] - offered[i] for i in ids]

    def leg(end: dict[str, int], begin: dict[str, int]) -> float:
        return statistics.median(end[i] - begin[i] for i in ids)

    legs = (f"median legs: offered->claimed {leg(claimed, offered):.0f}, claimed->completed "
            f"{leg(completed, claimed):.0f}, completed->next started {leg(next_started, completed):.0f} ms")
    return [
        Result(f"robot round trip p50 ({ROBOTS} robots)", _percentile(round_trips, 0.50), "ms", "report",
               f"offered -> next step started; {len(ids)} runs at {RATE}/s"),
        Result(f"robot round trip p99 ({ROBOTS} robots)", _percentile(round_trips, 0.99), "ms", "report", legs),
    ]


async def _tasks_per_second(client: ClientSession, redis: Redis, base: str, tenant: _Tenant) -> list[Result]:
    """``DRAIN`` one-robot-step executions, all offered before the robots start; tasks/s from the first claim to
    the last completion."""
    workflow = await _workflow(client, tenant.auth, "robot-only", [{"action": "noop", "runs_on": POOL}])
    since = await _redis_now_id(redis)
    bodies = [{"runs": [{} for _ in range(min(1000, DRAIN - start))]} for start in range(0, DRAIN, 1000)]
    await asyncio.gather(*(call(client, "POST", f"/api/workflows/{workflow}/execute/bulk", body, tenant.auth)
                           for body in bodies))

    async def all_offered() -> bool:
        async with redis.pipeline(transaction=False) as pipe:
            for p in range(PARTITIONS):
                pipe.zcard(keys.offers(p, tenant.id, POOL))
            return sum(await pipe.execute()) >= DRAIN

    await wait_until(all_offered, timeout=60)
    async with _robots(base, tenant.robot_keys):
        await wait_until(lambda: drained(redis), timeout=60)
    events = await _events(redis, since)
    claims = [ms for ms, kind, _ in events if kind == "step.claimed"]
    completions = [ms for ms, kind, _ in events if kind == "step.completed"]
    if len(completions) < DRAIN:
        raise RuntimeError(f"only {len(completions)} of {DRAIN} robot tasks completed")
    seconds = max(0.001, (max(completions) - min(claims)) / 1000)
    return [Result(f"robot tasks/s (1 API process, {ROBOTS} robots)", len(completions) / seconds, "tasks/s",
                   "report", f"{DRAIN:,} pre-offered tasks; first claim -> last completion")]


async def robot_round_trip() -> list[Result]:
    redis = await fresh_redis()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            e = env(ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", ORQ_EXECUTOR_CONCURRENCY="200")
            with processes((["api", "--port", str(port)], e), (["executor"], e), (["executor"], e)):
                async with session(base, 32) as client:
                    await wait_ready(client)
                    tenant = await _tenant(client)
                    await asyncio.sleep(1.0)  # both executors up and blocked on the empty streams
                    results = await _round_trip(client, redis, base, tenant)
                    results += await _tasks_per_second(client, redis, base, tenant)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return results
