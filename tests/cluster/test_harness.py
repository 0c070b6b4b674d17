"""The local Redis Cluster harness itself: six nodes, three masters covering every slot, failover, resharding."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from tests.cluster.harness import SLOTS, LocalCluster, slot_of, slot_of_key

pytestmark = pytest.mark.slow


def test_slot_of_matches_redis(cluster: LocalCluster) -> None:
    with cluster.client(cluster.live_ports()[0]) as node:
        for tag in ("0", "1", "orq-3", "tenant-x"):
            assert slot_of(tag) == node.execute_command("CLUSTER", "KEYSLOT", f"orq:{{{tag}}}:log")
    assert slot_of_key("a{b}c") == slot_of("b") and slot_of_key("a{}c") == slot_of("a{}c")


def test_six_nodes_three_masters_own_every_slot(cluster: LocalCluster) -> None:
    nodes = cluster.nodes()
    assert len(nodes) == 6 and len(cluster.live_ports()) == 6
    masters = cluster.masters()
    assert len(masters) == 3
    owned = sorted(slot for ranges in masters.values() for lo, hi in ranges for slot in range(lo, hi + 1))
    assert owned == list(range(SLOTS))
    for port in masters:
        assert len(cluster.replicas_of(port)) == 1
    assert cluster.healthy()


def test_a_cluster_client_reads_and_writes_through_the_seed(cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(cluster.seed_url)
    try:
        client.set("harness:{probe}:a", "1")
        assert client.get("harness:{probe}:a") == b"1"
        assert cluster.master_of_slot(slot_of("probe")) in cluster.masters()
    finally:
        client.delete("harness:{probe}:a")
        client.close()


def test_kill9_a_master_promotes_its_replica(fresh_cluster: LocalCluster) -> None:
    victim = fresh_cluster.master_of_slot(slot_of("victim"))
    replicas = fresh_cluster.replicas_of(victim)
    slots = fresh_cluster.masters()[victim]
    fresh_cluster.kill9(victim)
    promoted = fresh_cluster.wait_failover(victim)
    assert promoted in replicas
    assert fresh_cluster.masters()[promoted] == slots
    assert victim not in fresh_cluster.live_ports()
    assert fresh_cluster.healthy()
    fresh_cluster.restart(victim)
    assert fresh_cluster.replicas_of(promoted) == [victim], "the old master came back as a replica"
    assert len(fresh_cluster.masters()) == 3


def test_reshard_moves_one_exact_slot_with_its_keys(fresh_cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(fresh_cluster.seed_url)
    try:
        for i in range(250):  # more than one MIGRATE batch
            client.set(f"harness:{{moved}}:{i}", str(i))
        slot = slot_of("moved")
        source = fresh_cluster.master_of_slot(slot)
        target = next(p for p in fresh_cluster.masters() if p != source)
        fresh_cluster.reshard(slot, target)
        assert fresh_cluster.master_of_slot(slot) == target
        with fresh_cluster.client(target) as node:
            assert node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 250
        assert client.get("harness:{moved}:249") == b"249"
        # A master's lowest slot goes through redis-cli's own reshard.
        lowest = fresh_cluster.masters()[source][0][0]
        fresh_cluster.reshard(lowest, target)
        assert fresh_cluster.master_of_slot(lowest) == target
    finally:
        client.close()
