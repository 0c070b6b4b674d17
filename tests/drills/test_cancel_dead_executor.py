"""Drill: a user cancels runs (through the API) while the executor running them is dead (``kill -9``).

The cancel is accepted at once; the executor that takes the orphaned work entries over must not run them
again: they stay ``cancelled``, no step starts after the cancel, and the tenant's running slots come back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.log import keys
from tests.drills.fleet import ADMIN_TOKEN, Fleet, drill_env, fleet, pid_of
from tests.drills.ledger import after_cancel, assert_kept_promises, assert_released, crashed_pids, histories, holder
from tests.executor.seed import PARTITIONS, status
from tests.helpers import REDIS_URL, assert_always, assert_eventually

pytestmark = pytest.mark.slow

LEASE_S = 1
STEP_MS = 4_000  # the runs are in this step when their executor dies
RUNS = 2
STEPS: list[dict[str, Any]] = [{"action": "delay", "params": {"ms": STEP_MS}}, {"action": "noop"}]
WORKFLOW = {"name": "cancel-me", "steps": STEPS}


async def new_tenant(base_url: str) -> tuple[str, str]:
    """(tenant id, api key) of a tenant the admin creates."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        created = await admin.post("/api/tenants", json={"name": "drill-cancel", "plan": "enterprise"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"]), str(created.json()["api_key"])


async def execute(client: httpx.AsyncClient, count: int) -> list[str]:
    saved = await client.post("/api/workflows", json=WORKFLOW)
    assert saved.status_code == 201, saved.text
    ids = []
    for _ in range(count):
        accepted = await client.post(f"/api/workflows/{saved.json()['id']}/execute", json={})
        assert accepted.status_code == 202, accepted.text
        ids.append(str(accepted.json()["execution_id"]))
    return ids


async def test_cancel_while_the_executor_is_dead_stays_cancelled(redis: Redis, tmp_path: Path) -> None:
    env = drill_env(REDIS_URL, ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'orq.db'}",
                    ORQ_LEASE_SECONDS=str(LEASE_S), ORQ_SHUTDOWN_GRACE_SECONDS="1")
    with fleet(env, tmp_path) as crew:
        base_url = await crew.api("api")
        tenant_id, key = await new_tenant(base_url)
        async with httpx.AsyncClient(base_url=base_url, timeout=10,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            ids = await execute(client, RUNS)
            dead = await kill_mid_step(crew, redis, ids)
            for execution_id in ids:
                cancelled = await client.post(f"/api/executions/{execution_id}/cancel")
                assert cancelled.status_code == 202, cancelled.text
        await crew.executor("taker")

        async def stays_cancelled() -> None:
            for execution_id, events in (await histories(redis, ids)).items():
                late = after_cancel(events)
                assert not late, f"{execution_id}: {late}"
                state = await status(redis, tenant_id, execution_id)
                assert state.get("status") == "cancelled", f"{execution_id} is {state.get('status')!r}"

        # More than two leases: the taker sees the dead executor's entries as expired well within this.
        await assert_always(stays_cancelled, duration=3 * LEASE_S, message="cancelled runs stay cancelled")
        await assert_released(redis, tenant_id, timeout=5 * LEASE_S)
        await assert_kept_promises(redis, tenant_id, ids, steps=len(STEPS), outcome="cancelled",
                                   real_crash=crashed_pids([dead]))
        p = keys.partition_of(tenant_id, PARTITIONS)
        assert int(await redis.hget(keys.running(p), tenant_id) or 0) == 0, "the tenant's running slots are back"


async def kill_mid_step(crew: Fleet, redis: Redis, ids: list[str]) -> int:
    """Start an executor, let it take every run into the long step, ``kill -9`` it; its pid."""
    dead = await crew.executor("dead")

    async def all_in_hand() -> None:
        for events in (await histories(redis, ids)).values():
            current = holder(events)
            assert current and pid_of(current) == dead.pid, "run by the executor about to die"

    await assert_eventually(all_in_hand, timeout=15, message="every run in the long step")
    dead.kill9()
    return dead.pid
