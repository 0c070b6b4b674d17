"""The scheduler with an injected clock: each tick once (also with two schedulers racing), catch-up after
downtime, overlap, disabled triggers, and executions requested through admission."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from services.trigger.schedule import Scheduler
from shared.domain import commit_script
from shared.domain.triggers.firing import Firer
from shared.infra.clock import month_of, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from shared.log.events import ExecutionQueued, TriggerFired, TriggerSkipped
from tests.api.support import TenantHandle, mark_failed, mark_running
from tests.trigger.conftest import events_of, make_trigger

MINUTE = 60_000


async def setup(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, **config: Any) -> tuple[str, int]:
    """A schedule trigger, and its cursor (the save time)."""
    trigger = await make_trigger(client, tenant, "schedule", **config)
    cursor = int(await redis.hget(keys.trigger(tenant.partition, trigger["id"]), "cursor"))
    return trigger["id"], cursor


def next_minute(ms: int) -> int:
    return (ms // MINUTE + 1) * MINUTE


async def test_each_tick_fires_once_with_params(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer
) -> None:
    trigger_id, cursor = await setup(client, tenant, redis, cron="* * * * *", params={"report": "daily"},
                                  overlap="allow")
    scheduler = Scheduler(redis, firer, settings)
    tick = next_minute(cursor)
    assert await scheduler.tick(tick - 1) == 0
    assert await scheduler.tick(tick + 200) == 1
    assert await scheduler.tick(tick + 5_000) == 0, "the same tick never fires twice"
    assert await scheduler.tick(tick + MINUTE + 10) == 1
    queued = await events_of(redis, tenant.partition, "execution.queued")
    assert len(queued) == 2 and all(isinstance(e, ExecutionQueued) for e in queued)
    first = queued[0]
    assert isinstance(first, ExecutionQueued)
    assert first.trigger_type == "schedule" and first.params["report"] == "daily"
    assert first.params["scheduled_at"].endswith("+00:00")
    fired = await events_of(redis, tenant.partition, "trigger.fired")
    assert [e.source["tick"] for e in fired if isinstance(e, TriggerFired)] == [tick, tick + MINUTE]
    usage = await redis.get(keys.usage(tenant.partition, tenant.id, month_of(now_ms())))
    assert int(usage) == 2, "counted against the quota like any execution"


async def test_two_schedulers_racing_fire_each_tick_once(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    _, cursor = await setup(client, tenant, redis, cron="* * * * * *", overlap="allow")
    committers = [commit_script.committer(redis), commit_script.committer(redis)]
    schedulers = [Scheduler(redis, Firer(redis, c, settings), settings) for c in committers]
    try:
        start = (cursor // 1000 + 1) * 1000
        for second in range(20):
            now = start + second * 1000 + 100
            await asyncio.gather(*(s.tick(now) for s in schedulers))
    finally:
        for c in committers:
            await c.close()
    fired = [e for e in await events_of(redis, tenant.partition, "trigger.fired") if isinstance(e, TriggerFired)]
    ticks = [e.source["tick"] for e in fired]
    assert sorted(ticks) == [start + i * 1000 for i in range(20)], "every tick once, none twice"
    assert len(await events_of(redis, tenant.partition, "execution.queued")) == 20


async def test_downtime_catch_up_policies(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer
) -> None:
    one, cursor = await setup(client, tenant, redis, cron="*/10 * * * *", overlap="allow")
    every, _ = await setup(client, tenant, redis, cron="*/10 * * * *", catch_up="all", overlap="allow")
    never, _ = await setup(client, tenant, redis, cron="*/10 * * * *", catch_up="none", overlap="allow")
    scheduler = Scheduler(redis, firer, settings)
    # Every trigger service was down for an hour or so, and comes back halfway between two ticks: back within
    # the misfire grace of a tick, that tick would be on time and fire even under ``catch_up: none``.
    back = (cursor + 70 * MINUTE) // (10 * MINUTE) * (10 * MINUTE) + 5 * MINUTE
    await scheduler.tick(back)
    fired = [e for e in await events_of(redis, tenant.partition, "trigger.fired") if isinstance(e, TriggerFired)]
    by_trigger = {t: [e.source for e in fired if e.aggregate_id == t] for t in (one, every, never)}
    assert len(by_trigger[one]) == 1 and by_trigger[one][0]["missed"] >= 5
    assert len(by_trigger[every]) >= 6 and [s["tick"] for s in by_trigger[every]] == sorted(
        s["tick"] for s in by_trigger[every])
    assert by_trigger[never] == []
    skipped = [e for e in await events_of(redis, tenant.partition, "trigger.skipped") if isinstance(e, TriggerSkipped)]
    assert [(e.aggregate_id, e.reason) for e in skipped] == [(never, "missed")] and skipped[0].ticks >= 6
    await scheduler.tick(back + 1000)
    assert len(await events_of(redis, tenant.partition, "trigger.fired")) == len(fired), "caught up: nothing more"


async def test_overlap_skip_waits_for_the_previous_run(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer,
    app: Any,
) -> None:
    trigger_id, cursor = await setup(client, tenant, redis, cron="* * * * *")  # overlap: skip (default)
    scheduler = Scheduler(redis, firer, settings)
    tick = next_minute(cursor)
    assert await scheduler.tick(tick + 10) == 1
    first = (await redis.hget(keys.trigger(tenant.partition, trigger_id), "last_execution_id")).decode()
    committer: Committer = app.state.api.committer
    await mark_running(committer, tenant, first)
    assert await scheduler.tick(tick + MINUTE + 10) == 0
    skipped = await events_of(redis, tenant.partition, "trigger.skipped")
    assert [e.reason for e in skipped if isinstance(e, TriggerSkipped)] == ["overlap"]
    await mark_failed(committer, tenant, first, dead_letter=False)
    assert await scheduler.tick(tick + 2 * MINUTE + 10) == 1, "the previous run ended: fires again"


async def test_disabled_or_deleted_never_fire_and_a_save_restarts_the_count(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer
) -> None:
    trigger = await make_trigger(client, tenant, "schedule", cron="* * * * *")
    body = {"workflow_id": trigger["workflow_id"], "trigger_type": "schedule", "enabled": False,
            "config": {"cron": "* * * * *"}}
    r = await client.put(f"/api/triggers/{trigger['id']}", headers=tenant.headers, json=body)
    assert r.status_code == 200
    scheduler = Scheduler(redis, firer, settings)
    base = now_ms()
    for minute in range(1, 4):
        assert await scheduler.tick(base + minute * MINUTE) == 0
    r = await client.put(f"/api/triggers/{trigger['id']}", headers=tenant.headers, json={**body, "enabled": True})
    assert r.status_code == 200
    resumed = now_ms()
    # Ticks of the disabled hours are not caught up: counting starts at the save that enabled it.
    assert await scheduler.tick(next_minute(resumed) + 10) == 1
    fired = await events_of(redis, tenant.partition, "trigger.fired")
    assert len(fired) == 1 and isinstance(fired[0], TriggerFired) and fired[0].source.get("missed") is None
    r = await client.delete(f"/api/triggers/{trigger['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert await scheduler.tick(next_minute(resumed) + 5 * MINUTE) == 0
