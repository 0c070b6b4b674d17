"""The trigger service as real ``orq trigger`` processes in a whole deployment (api, executors, projector).

Two trigger services run at once: an every-second schedule fires each tick once (a real short-interval run,
no injected clock), its runs complete on the executors, and a chained workflow follows each of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.log.events import TriggerFired
from shared.readmodel.schema import executions
from tests.e2e.conftest import Deployment, admin, deployment, tenant
from tests.helpers import assert_eventually, free_port
from tests.trigger.conftest import events_of

__all__ = ["admin", "deployment", "tenant"]
pytestmark = pytest.mark.slow


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_two_trigger_services_fire_each_tick_once_and_chains_follow(
    deployment: Deployment, tenant: httpx.AsyncClient, redis: Redis, engine: AsyncEngine
) -> None:
    smtp_port = str(free_port())  # both ask for it: one listens, the other waits for it (not fatal)
    for name in ("trigger-1", "trigger-2"):
        deployment.env.update(ORQ_TRIGGER_POLL_SECONDS="0.2", ORQ_SMTP_PORT=smtp_port)
        deployment.start("trigger", name=name)
    ticking = await _post(tenant, "/api/workflows", {"name": "tick", "steps": [
        {"action": "set", "params": {"values": {"at": "{{ params.scheduled_at }}"}}}]})
    after = await _post(tenant, "/api/workflows", {"name": "after", "steps": [{"action": "noop"}]})
    chain = await _post(tenant, "/api/triggers", {"workflow_id": after["id"], "trigger_type": "workflow_completed",
                                                  "config": {"workflow_id": ticking["id"]}})
    schedule = await _post(tenant, "/api/triggers", {"workflow_id": ticking["id"], "trigger_type": "schedule",
                                                     "config": {"cron": "* * * * * *", "overlap": "allow"}})

    async def some_ticks() -> list[TriggerFired]:
        fired = [e for p in range(4) for e in await events_of(redis, p, "trigger.fired")
                 if isinstance(e, TriggerFired) and e.aggregate_id == schedule["id"]]
        assert len(fired) >= 4, len(fired)
        return fired

    await assert_eventually(some_ticks, timeout=30, message="four ticks fired")
    r = await tenant.put(f"/api/triggers/{schedule['id']}", json={
        "workflow_id": ticking["id"], "trigger_type": "schedule", "enabled": False,
        "config": {"cron": "* * * * * *"}})
    assert r.status_code == 200, r.text
    fired = await some_ticks()
    ticks = [e.source["tick"] for e in fired]
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {sorted(ticks)}"
    assert all(t % 1000 == 0 for t in ticks)

    async def all_done() -> list[Any]:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(executions))).mappings().all()
        runs = [r for r in rows if r["workflow_id"] == ticking["id"]]
        chained = [r for r in rows if r["workflow_id"] == after["id"]]
        assert len(runs) == len(fired) and all(r["status"] == "completed" for r in runs)
        assert len(chained) == len(runs) and all(r["status"] == "completed" for r in chained)
        assert {r["parent_execution_id"] for r in chained} == {r["id"] for r in runs}
        assert {r["trigger_type"] for r in runs} == {"schedule"}
        assert {r["trigger_type"] for r in chained} == {"workflow_completed"}
        return runs

    runs = await assert_eventually(all_done, timeout=60, message="every run and its chained run completed")
    stamps = sorted(datetime.fromisoformat(r["result"]["at"]).timestamp() * 1000 for r in runs)
    assert stamps == sorted(ticks), "each run got its own tick as params.scheduled_at"

    async def counted() -> None:
        body = (await tenant.get(f"/api/triggers/{chain['id']}")).json()
        assert body["trigger_count"] == len(runs) and body["last_triggered_at"]

    await assert_eventually(counted, timeout=30, message="the chain trigger's count projected")
