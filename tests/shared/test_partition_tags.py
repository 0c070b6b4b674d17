"""Partition hash tags: plain ``{p}`` on one Redis; spread evenly over a cluster's masters in cluster mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.log import keys

# The slot runs ``redis-cli --cluster create`` gives 3 masters.
THREE_MASTERS = [(0, 5460), (5461, 10922), (10923, 16383)]


@pytest.fixture(autouse=True)
def single_node_afterwards() -> Iterator[None]:
    yield
    keys.configure(partitions=4, cluster=False)


def master_of(slot: int) -> int:
    return next(i for i, (low, high) in enumerate(THREE_MASTERS) if low <= slot <= high)


def test_single_node_keeps_the_plain_tag() -> None:
    keys.configure(partitions=4, cluster=False)
    assert keys.log(3) == "orq:{3}:log"
    assert keys.execution(2, "e1") == "orq:{2}:exec:e1"


@pytest.mark.parametrize("partitions", [1, 3, 4, 6, 16, 64, 256])
def test_each_partition_lands_in_its_own_equal_run_of_slots(partitions: int) -> None:
    keys.configure(partitions=partitions, cluster=True)
    for p in range(partitions):
        slot = keys.slot_of(keys.hash_tag(p))
        assert p * keys.CLUSTER_SLOTS // partitions <= slot < (p + 1) * keys.CLUSTER_SLOTS // partitions


def test_six_partitions_sit_two_on_each_of_three_masters() -> None:
    keys.configure(partitions=6, cluster=True)
    per_master = [0, 0, 0]
    for p in range(6):
        per_master[master_of(keys.slot_of(keys.hash_tag(p)))] += 1
    assert per_master == [2, 2, 2]


def test_plain_tags_would_crowd_a_master() -> None:
    # Why the tags are chosen at all: CRC16 puts plain 0..5 on the three masters unevenly.
    crowded = [master_of(keys.slot_of(str(p))) for p in range(6)]
    assert sorted(crowded.count(m) for m in range(3)) != [2, 2, 2]


def test_every_key_of_a_partition_shares_its_slot_and_names_its_partition() -> None:
    keys.configure(partitions=8, cluster=True)
    for p in range(8):
        names = [keys.log(p), keys.work(p, 3), keys.execution(p, "x"), keys.bell(p), keys.dlq(p), keys.prefix(p) + "x"]
        tags = {name[name.index("{") + 1:name.index("}")] for name in names}
        assert tags == {keys.hash_tag(p)}
        assert all(keys.partition_of_key(name) == p for name in names)


def test_configure_clears_the_cached_names() -> None:
    keys.configure(partitions=4, cluster=False)
    plain = keys.log(0)
    keys.configure(partitions=4, cluster=True)
    assert keys.log(0) != plain
    keys.configure(partitions=4, cluster=False)
    assert keys.log(0) == plain
