"""Orquesta on a real Redis Cluster (DESIGN §13).

What the suite proves: with ``ORQ_REDIS_CLUSTER=1`` the real ``orq`` processes (api, executors, projector,
trigger) run the core promises unchanged on a 6-node local cluster (3 masters, 3 replicas) — execute to a
projected completion, priorities, per-plan concurrency, retry → DLQ → DLQ retry, a chain trigger firing once,
the WebSocket feed, ``orq replay`` giving the same rows (test_core.py); and that no accepted execution is lost
or run twice when, mid-run, the master holding the most partitions is killed with ``ORQ_REDIS_WAIT_REPLICAS=1``
(its replica is promoted, the dead node comes back as a replica) or a partition's slot is moved to another
master (test_drills.py). test_harness.py checks the cluster harness itself (harness.py).

How to run it: ``redis-server`` and ``redis-cli`` (Redis ≥ 7) on PATH, then
``.venv/bin/pytest tests/cluster``. Each cluster lives on free local ports in a tmp folder that is deleted
afterwards; the shared Redis on 6379 is not used. Without the binaries the suite is skipped locally and fails
with ``CI=true``.
"""
