"""One Redis against a local 3-master Redis Cluster, same run: executor throughput, Redis CPU per execution,
and what ``ORQ_REDIS_WAIT_REPLICAS=1`` costs a commit.

Both sides use 6 partitions (two per master on the cluster: see ``keys.spread_tag``) and the same two executor
processes. The cluster is ``tests/cluster/harness.LocalCluster``: 3 masters, each with a replica, all on this
machine, so its masters share the machine's cores with the executors and the replicas.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from redis import Redis as SyncRedis

from bench.common import (
    BENCH_REDIS_URL,
    PARTITIONS,
    Result,
    dispatched,
    drained,
    env,
    processes,
    queue_units,
    seed_workflow,
    wait_until,
)
from shared.domain import commit_script
from shared.log import keys
from shared.log.commit import Applied
from shared.log.redis import connect
from tests.cluster.harness import LocalCluster

CLUSTER_PARTITIONS = 6
SINGLE_ROW = "executor: one Redis, 6 partitions"
COMMIT_ROW = "commit p50, cluster, no WAIT"
COMMITS = 300


def _cpu_s(ports: Sequence[tuple[str, int]]) -> float:
    """Seconds of CPU (user + sys) the Redis servers at ``ports`` have used so far."""
    total = 0.0
    for host, port in ports:
        with SyncRedis(host=host, port=port) as node:
            info = node.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


async def _drain(url: str, cluster: bool, servers: Sequence[tuple[str, int]], count: int
                 ) -> tuple[float, float, float]:
    """(executions/s, Redis CPU µs per execution, log bytes per execution) draining ``count`` pre-queued noop
    runs with 2 executors."""
    keys.configure(partitions=CLUSTER_PARTITIONS, cluster=cluster)
    redis = connect(url, cluster=cluster)
    try:
        if not cluster:
            await redis.flushdb()
        committer = commit_script.committer(redis)
        units = []
        for t in range(12):
            workflow = await seed_workflow(committer, f"bench-tenant-{t}", partitions=CLUSTER_PARTITIONS)
            units += queue_units(workflow, count // 12, partitions=CLUSTER_PARTITIONS)
        await committer.commit_all(units)
        await committer.close()
        e = env(ORQ_REDIS_URL=url, ORQ_REDIS_CLUSTER="1" if cluster else "0",
                ORQ_PARTITIONS=str(CLUSTER_PARTITIONS), ORQ_EXECUTOR_CONCURRENCY="200")
        cpu_before = _cpu_s(servers)
        with processes((["executor"], e), (["executor"], e)):
            await wait_until(lambda: dispatched(redis, CLUSTER_PARTITIONS), timeout=60, interval=0.005)
            seconds = await wait_until(lambda: drained(redis, CLUSTER_PARTITIONS), timeout=600)
            cpu = _cpu_s(servers) - cpu_before
        done = count // 12 * 12
        log_bytes = sum([int(await redis.memory_usage(keys.log(p), samples=0) or 0) for p in range(CLUSTER_PARTITIONS)])
        return done / seconds, cpu / done * 1e6, log_bytes / done
    finally:
        await redis.aclose()
        keys.configure(partitions=PARTITIONS, cluster=False)


async def _commit_ms(url: str, wait_replicas: int) -> list[float]:
    """Milliseconds of each of ``COMMITS`` one-execution admissions committed one after another."""
    keys.configure(partitions=CLUSTER_PARTITIONS, cluster=True)
    redis = connect(url, cluster=True)
    try:
        committer = commit_script.committer(redis, wait_replicas=wait_replicas)
        workflow = await seed_workflow(committer, f"bench-wait-{wait_replicas}", partitions=CLUSTER_PARTITIONS)
        took = []
        for unit in queue_units(workflow, COMMITS, batch=1, partitions=CLUSTER_PARTITIONS):
            start = time.perf_counter()
            assert isinstance(await committer.commit(unit), Applied)
            took.append((time.perf_counter() - start) * 1000)
        await committer.close()
        return took
    finally:
        await redis.aclose()
        keys.configure(partitions=PARTITIONS, cluster=False)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def cluster_rows(count: int = 12_000) -> list[Result]:
    single_server = SyncRedis.from_url(BENCH_REDIS_URL).connection_pool.connection_kwargs
    one = [(str(single_server.get("host", "127.0.0.1")), int(single_server.get("port", 6379)))]
    single_rate, single_cpu, log_bytes = await _drain(BENCH_REDIS_URL, False, one, count)
    with LocalCluster() as cluster:
        masters = [("127.0.0.1", port) for port in cluster.masters()]
        rate, cpu, _ = await _drain(cluster.seed_url, True, masters, count)
        plain = await _commit_ms(cluster.seed_url, 0)
        waited = await _commit_ms(cluster.seed_url, 1)
    note = "2 executor procs x 200"
    return [
        Result(SINGLE_ROW, single_rate, "exec/s", "report", note),
        Result("executor: 3-master cluster, 6 partitions", rate, "exec/s", "report", note, peer=SINGLE_ROW),
        Result("redis CPU per execution: one Redis", single_cpu, "us", "report", "used_cpu_user+sys"),
        Result("redis CPU per execution: cluster masters", cpu, "us", "report", "sum over the 3 masters"),
        Result("redis memory per execution: its log entries", log_bytes, "bytes", "report",
               "MEMORY USAGE of the logs / executions (state: see the memory rows)"),
        Result(COMMIT_ROW, statistics.median(plain), "ms", "report", f"{COMMITS} single admissions"),
        Result("commit p50, cluster, WAIT 1 replica", statistics.median(waited), "ms", "report",
               "ORQ_REDIS_WAIT_REPLICAS=1", peer=COMMIT_ROW),
        Result("commit p99, cluster, no WAIT", _p99(plain), "ms", "report", ""),
        Result("commit p99, cluster, WAIT 1 replica", _p99(waited), "ms", "report", ""),
    ]
