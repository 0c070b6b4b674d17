"""Fixtures of the cluster suite: one shared local Redis Cluster, and a fresh one for drills that break theirs.

No Redis Cluster tools on PATH: skipped locally with the reason; with ``CI=true`` a failure instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.log import keys
from shared.log.redis import connect
from tests.cluster.harness import LocalCluster, binaries
from tests.conftest import IN_CI
from tests.executor.seed import PARTITIONS


def _require_binaries() -> None:
    server, cli = binaries()
    if server is None or cli is None:
        missing = " and ".join(name for name, path in (("redis-server", server), ("redis-cli", cli)) if path is None)
        reason = f"no {missing} on PATH: the Redis Cluster suite needs both"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A healthy 6-node cluster shared by every test that leaves its topology alone."""
    _require_binaries()
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test alone: for drills that kill nodes or move slots."""
    _require_binaries()
    with LocalCluster(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_keys() -> Iterator[None]:
    """Key names of cluster mode in this process (the hash tags the ``orq`` processes use), for one module only:
    the single-node suites that run after it need the plain ones back."""
    keys.configure(partitions=PARTITIONS, cluster=True)
    try:
        yield
    finally:
        keys.configure(partitions=PARTITIONS, cluster=False)


def cluster_client(seed_url: str) -> Redis:
    """A cluster client for the test's own reads (the ledger, the projector's progress): the product's own."""
    return connect(seed_url, cluster=True)
