"""Executor throughput: pre-queued one-step noop executions drained by two executor processes.

``dispatch_by_tenants`` repeats it with the same work spread over 1, 100 and 10,000 tenants: the cost of
fair-share dispatch must not grow with the number of active tenants.
"""

from __future__ import annotations

from bench.common import (
    Result,
    commands_total,
    dispatched,
    drained,
    env,
    fresh_redis,
    processes,
    queue_units,
    seed_workflow,
    wait_until,
    work_left,
)
from bench.peers import bullmq
from shared.domain import commit_script


async def _drain(count: int, tenants: int, executors: int, concurrency: int) -> tuple[float, float]:
    """(executions/s, Redis commands per execution) for ``count`` runs spread over ``tenants``."""
    redis = await fresh_redis()
    committer = commit_script.committer(redis)
    units = []
    per_tenant = max(1, count // tenants)
    for t in range(tenants):
        workflow = await seed_workflow(committer, f"bench-tenant-{t}")
        units += queue_units(workflow, per_tenant)
    await committer.commit_all(units)
    await committer.close()
    queued = await work_left(redis)
    before = await commands_total(redis)
    e = env(ORQ_EXECUTOR_CONCURRENCY=str(concurrency))
    with processes(*[(["executor"], e) for _ in range(executors)]):
        # process start-up is not throughput
        await wait_until(lambda: dispatched(redis), timeout=60, interval=0.005)
        seconds = await wait_until(lambda: drained(redis), timeout=600)
    per_exec = (await commands_total(redis) - before) / queued
    await redis.aclose()
    return queued / seconds, per_exec


async def executor_throughput(count: int = 20_000, executors: int = 2, concurrency: int = 200) -> list[Result]:
    rate, per_exec = await _drain(count, 16, executors, concurrency)
    return [
        Result(f"executor: {count} noop runs, {executors} procs x {concurrency}", rate, "exec/s", ">= 6,000",
               "first take to last ack", peer=bullmq.PROCESSING),
        Result("redis commands per execution (executor side)", per_exec, "cmds", "report", "INFO commandstats",
               peer=bullmq.COMMANDS),
    ]


async def dispatch_by_tenants(count: int = 20_000) -> list[Result]:
    results = []
    baseline = 0.0
    for tenants in (1, 100, 10_000):
        rate, per_exec = await _drain(count, tenants, 2, 200)
        baseline = baseline or rate
        results.append(Result(f"dispatch: {count} runs over {tenants} tenants", rate, "exec/s",
                              ">= 80% of 1 tenant", f"{rate / baseline:.0%} of 1 tenant, {per_exec:.1f} cmds/exec"))
    return results
