"""``ORQ_REDIS_WAIT_REPLICAS``: a commit is answered only once replicas confirm it, on the master that took it."""

from __future__ import annotations

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log import keys
from shared.log.commit import Applied, NotReplicated, Unit
from shared.log.events import ExecutionCancelled
from shared.log.redis import connect
from tests.cluster.harness import HOST, LocalCluster, slot_of_key
from tests.executor.seed import PARTITIONS

pytestmark = pytest.mark.usefixtures("cluster_keys")


def _unit(p: int, n: int) -> Unit:
    event = ExecutionCancelled(tenant_id="t", aggregate_id=f"e{n}", ts=n)
    return Unit(p).event(event).hset(keys.execution(p, f"e{n}"), {"status": "cancelled"})


def _waits(port: int) -> int:
    with SyncRedis(host=HOST, port=port) as node:
        stats = node.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_a_waited_commit_is_confirmed_by_the_master_of_each_partition_it_wrote(cluster: LocalCluster) -> None:
    redis = connect(cluster.seed_url, cluster=True)
    masters = {p: cluster.master_of_slot(slot_of_key(keys.log(p))) for p in range(PARTITIONS)}
    # Loads the script on every master first (a NOSCRIPT reply runs a batch twice).
    warm = commit_script.committer(redis)
    await warm.commit_all([_unit(p, p) for p in range(PARTITIONS)])
    await warm.close()
    before = {port: _waits(port) for port in set(masters.values())}
    committer = commit_script.committer(redis, wait_replicas=1)
    outcomes = await committer.commit_all([_unit(p, 100 + p) for p in range(PARTITIONS)])
    await committer.close()
    assert all(isinstance(o, Applied) for o in outcomes)
    # One WAIT per master the batch wrote to, sent on the connection that wrote: none to the others.
    assert {port: _waits(port) - n for port, n in before.items()} == {port: 1 for port in before}
    for p in range(PARTITIONS):
        assert await redis.hget(keys.execution(p, f"e{100 + p}"), "status") == b"cancelled"
    await redis.aclose()


async def test_a_commit_no_replica_confirms_is_not_answered_as_done(redis: Redis) -> None:
    # The test Redis has no replica: WAIT 1 times out with 0, and the committer says so instead of Applied.
    keys.configure(partitions=PARTITIONS, cluster=False)
    try:
        committer = commit_script.committer(redis, wait_replicas=1)
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await committer.commit(_unit(0, 1))
        await committer.close()
        committer = commit_script.committer(redis)  # without the setting, the same write is simply applied
        assert isinstance(await committer.commit(_unit(0, 2)), Applied)
        await committer.close()
    finally:
        keys.configure(partitions=PARTITIONS, cluster=True)
