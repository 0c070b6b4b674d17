"""Executor throughput: N pre-queued one-step noop executions drained by two executor processes."""

from __future__ import annotations

from bench.common import (
    Result,
    commands_total,
    env,
    fresh_redis,
    processes,
    queue_units,
    seed_workflow,
    wait_until,
    work_left,
)
from shared.commit import Committer


async def executor_throughput(count: int = 20_000, executors: int = 2, concurrency: int = 200) -> list[Result]:
    redis = await fresh_redis()
    committer = Committer(redis)
    units = []
    for t in range(16):
        workflow = await seed_workflow(committer, f"bench-tenant-{t}")
        units += queue_units(workflow, count // 16)
    await committer.commit_all(units)
    await committer.close()
    queued = await work_left(redis)
    before = await commands_total(redis)

    async def drained() -> bool:
        return await work_left(redis) == 0

    async def started() -> bool:
        return await work_left(redis) < queued

    e = env(ORQ_EXECUTOR_CONCURRENCY=str(concurrency))
    with processes(*[(["executor"], e) for _ in range(executors)]):
        await wait_until(started, timeout=60, interval=0.005)  # process start-up is not throughput
        seconds = await wait_until(drained, timeout=600)
    per_exec = (await commands_total(redis) - before) / queued
    await redis.aclose()
    return [
        Result(f"executor: {queued} noop runs, {executors} procs x {concurrency}", queued / seconds, "exec/s",
               ">= 6,000", "first take to last ack"),
        Result("redis commands per execution (executor side)", per_exec, "cmds", "report", "INFO commandstats"),
    ]
