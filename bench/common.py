"""Shared benchmark plumbing: a dedicated Redis database, seeding, processes, and the result table."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.domain.aggregates import WorkflowState, encode_definition
from shared.domain.executions.admission import Run, admission_unit
from shared.infra.clock import new_id, now_ms
from shared.infra.plans import load_plans
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.workflows import StepDef, WorkflowDef

ROOT = Path(__file__).resolve().parent.parent
BENCH_REDIS_URL = os.environ.get("ORQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BENCH_MYSQL_URL = os.environ.get("ORQ_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/orq_bench")
PARTITIONS = 4
# The benchmark's tenants are on a plan without rate or concurrency limits: they measure the machinery.
PLANS_FILE = Path(__file__).with_name("plans.json")
BENCH_PLAN = load_plans(str(PLANS_FILE))["bench"]
NOOP = WorkflowDef(name="noop", steps=[StepDef(action="noop")])


@dataclass(frozen=True, slots=True)
class Result:
    """One table row. ``peer`` names the row of another system (e.g. BullMQ's) measuring the same thing in
    the same run: the table prints this row's ratio to it."""

    name: str
    value: float
    unit: str
    target: str = ""
    note: str = ""
    peer: str = ""


RATIO_HEADER = "vs peer"
RATIO_FOOTNOTE = (f"{RATIO_HEADER}: Orquesta/peer for rates (unit .../s), peer/Orquesta for the rest (ms, cmds: "
                  "lower is better),\nso > 1.0x always means Orquesta is better. Only ratios from one run mean "
                  "anything on a shared machine.\n\"no peer row\": the peer suite was not selected, or was "
                  "skipped (the reason is on stderr).")


def peer_ratio(result: Result, peer: Result) -> float | None:
    """How many times better ``result`` is than ``peer`` (> 1.0: better), or None where it has no meaning."""
    if result.unit.endswith("/s"):
        return result.value / peer.value if peer.value > 0 else None
    return peer.value / result.value if result.value > 0 else None


def _ratio_cell(result: Result, by_name: dict[str, Result]) -> str:
    if not result.peer:
        return ""
    peer = by_name.get(result.peer)
    if peer is None:
        return "no peer row"
    ratio = peer_ratio(result, peer)
    return "n/a (zero)" if ratio is None else f"{ratio:.2f}x"


def print_table(results: list[Result]) -> None:
    by_name = {r.name: r for r in results}
    rows = [("benchmark", "result", RATIO_HEADER, "target", "note")]
    rows += [(r.name, f"{r.value:,.1f} {r.unit}", _ratio_cell(r, by_name), r.target, r.note) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    if any(r.peer for r in results):
        print(f"\n{RATIO_FOOTNOTE}")


def env(**overrides: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORQ_")}
    base.update({"ORQ_REDIS_URL": BENCH_REDIS_URL, "ORQ_PARTITIONS": str(PARTITIONS), "ORQ_LOG_LEVEL": "WARNING",
                 "ORQ_ADMIN_TOKEN": "bench-admin", "ORQ_PLANS_FILE": str(PLANS_FILE)})
    base.update(overrides)
    return base


@contextmanager
def processes(*commands: tuple[list[str], dict[str, str]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen([sys.executable, "-m", "orquesta", *args], env=e, cwd=ROOT) for args, e in commands]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


async def fresh_redis() -> Redis:
    redis = Redis.from_url(BENCH_REDIS_URL)
    await redis.flushdb()
    await redis.config_resetstat()
    return redis


async def seed_workflow(committer: Committer, tenant_id: str, definition: WorkflowDef = NOOP,
                        partitions: int = PARTITIONS) -> WorkflowState:
    p = keys.partition_of(tenant_id, partitions)
    workflow = WorkflowState(new_id(), tenant_id, definition.name, 1, False)
    unit = Unit(p).hset(keys.tenant(p, tenant_id), {"name": tenant_id, "plan": "bench", "key_hash": "-",
                                                    "paused": "0"})
    unit.hset(keys.workflow(p, workflow.id),
                        {"tenant": tenant_id, "name": definition.name, "version": 1, "deleted": "0"})
    unit.set(keys.workflow_version(p, workflow.id, 1), encode_definition(definition))
    assert isinstance(await committer.commit(unit), Applied)
    return workflow


def queue_units(workflow: WorkflowState, count: int, batch: int = 500, priority: int = 5,
                definition: WorkflowDef = NOOP, partitions: int = PARTITIONS) -> list[Unit]:
    p = keys.partition_of(workflow.tenant_id, partitions)
    plan = BENCH_PLAN
    units = []
    for start in range(0, count, batch):
        runs = [Run(new_id(), priority) for _ in range(min(batch, count - start))]
        units.append(admission_unit(p=p, tenant_id=workflow.tenant_id, plan=plan, workflow=workflow,
                                    definition=definition, runs=runs, now_ms=now_ms()))
    return units


async def work_left(redis: Redis) -> int:
    """Executions not finished yet: waiting in backlogs plus work entries not yet acked and deleted."""
    queued, entries = await _waiting_and_entries(redis, lambda pipe, p: pipe.hvals(keys.queued(p)))
    return sum(int(v) for counts in queued for v in counts) + entries


async def drained(redis: Redis, partitions: int = PARTITIONS) -> bool:
    """No backlog level left and no work entry left, in O(partitions) commands: unlike ``work_left`` this
    costs the same at 10,000 tenants as at one, so polling it does not load the Redis being measured."""
    levels, entries = await _waiting_and_entries(redis, lambda pipe, p: pipe.zcard(keys.levels(p)), partitions)
    return sum(levels) == 0 and entries == 0


async def dispatched(redis: Redis, partitions: int = PARTITIONS) -> bool:
    """Some work entry exists: an executor has started taking work."""
    _, entries = await _waiting_and_entries(redis, lambda pipe, p: pipe.zcard(keys.levels(p)), partitions)
    return entries > 0


async def _waiting_and_entries(redis: Redis, waiting: Callable[[Pipeline, int], object],
                               partitions: int = PARTITIONS) -> tuple[list[Any], int]:
    """One round trip: ``waiting(pipe, p)``'s reply for every partition, and the work entries of all."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            waiting(pipe, p)
            for stream in keys.work_streams(p):
                pipe.xlen(stream)
        replies = await pipe.execute()
    per = 1 + len(keys.work_streams(0))
    firsts = replies[::per]
    return firsts, sum(int(r) for i, r in enumerate(replies) if i % per)


async def wait_until(check: Any, timeout: float, interval: float = 0.02) -> float:
    """Seconds until ``await check()`` is true (raises after ``timeout``)."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(interval)
    return time.perf_counter() - start


async def commands_total(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())
