"""Event-driven triggers, through the log consumer's handler: chaining with a status filter (and redelivery),
and queue items (one execution per item, ``max_concurrent`` at a time, the item following the run)."""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis

from services.trigger.log_reactions import LogReactions
from services.trigger.queue_items import QueueItemTriggers
from shared.domain.aggregates import Status
from shared.domain.triggers.firing import Firer
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.consumer import records_of
from shared.log.events import ExecutionCompleted, ExecutionQueued, TriggerFired
from tests.api.support import TenantHandle, create_workflow, mark_failed, mark_running, projector
from tests.helpers import assert_eventually
from tests.trigger.conftest import events_of, make_trigger


def reactions_of(redis: Redis, firer: Firer, settings: Settings) -> LogReactions:
    return LogReactions(redis, firer, QueueItemTriggers(redis, firer, settings), settings)


async def feed_log(reactions: LogReactions, redis: Redis, p: int, after: str = "-") -> str:
    """Hand the log reactions every entry of the log after ``after`` (as the consumer would); the last id."""
    entries = await redis.xrange(keys.log(p), min=after if after == "-" else f"({after}")
    records = records_of(entries)
    await reactions.handle(keys.log(p), records)
    return records[-1].id if records else after


async def execute(client: httpx.AsyncClient, tenant: TenantHandle, workflow_id: str) -> str:
    r = await client.post(f"/api/workflows/{workflow_id}/execute", headers=tenant.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


async def complete(committer: Committer, tenant: TenantHandle, execution_id: str, result: Any) -> None:
    """What the executor's last commit does on success."""
    await mark_running(committer, tenant, execution_id)
    state_key = keys.execution(tenant.partition, execution_id)
    unit = Unit(tenant.partition).event(ExecutionCompleted(tenant_id=tenant.id, aggregate_id=execution_id,
                                                           ts=now_ms(), result=result))
    unit.hset(state_key, {"status": Status.COMPLETED.value})
    assert isinstance(await committer.commit(unit), Applied)


async def test_chaining_with_a_status_filter(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, app: Any
) -> None:
    wf_a = await create_workflow(client, tenant)
    wf_ok = await create_workflow(client, tenant)
    wf_ko = await create_workflow(client, tenant)
    await make_trigger(client, tenant, "workflow_completed", workflow=wf_ok, workflow_id=wf_a["id"])
    await make_trigger(client, tenant, "workflow_completed", workflow=wf_ko, workflow_id=wf_a["id"],
                       statuses=["failed", "cancelled"])
    committer: Committer = app.state.api.committer
    reactions = reactions_of(redis, firer, settings)
    good = await execute(client, tenant, wf_a["id"])
    await complete(committer, tenant, good, {"invoice": 42, "total": 99.5})
    last = await feed_log(reactions, redis, tenant.partition)
    queued = [e for e in await events_of(redis, tenant.partition, "execution.queued")
              if isinstance(e, ExecutionQueued) and e.workflow_id != wf_a["id"]]
    assert [(e.workflow_id, e.params, e.parent_execution_id, e.trigger_type) for e in queued] == [
        (wf_ok["id"], {"invoice": 42, "total": 99.5}, good, "workflow_completed")]
    # The consumer crashed before acking: the same events come again. Nothing fires twice.
    await feed_log(reactions, redis, tenant.partition)
    assert len(await events_of(redis, tenant.partition, "trigger.fired")) == 1
    bad = await execute(client, tenant, wf_a["id"])
    await mark_running(committer, tenant, bad)
    await mark_failed(committer, tenant, bad, dead_letter=True)
    await feed_log(reactions, redis, tenant.partition, last)
    fired = [e for e in await events_of(redis, tenant.partition, "trigger.fired") if isinstance(e, TriggerFired)]
    assert [(e.trigger.workflow_id, e.source["status"]) for e in fired] == [(wf_ok["id"], "completed"),
                                                                           (wf_ko["id"], "failed")]
    chained = [e for e in await events_of(redis, tenant.partition, "execution.queued")
               if isinstance(e, ExecutionQueued) and e.workflow_id == wf_ko["id"]]
    assert chained[0].params == {"error": "boom"} and chained[0].parent_execution_id == bad


async def test_queue_items_one_run_each_sequential_and_the_item_follows(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, app: Any
) -> None:
    r = await client.post("/api/queues", headers=tenant.headers, json={"name": "invoices", "max_retries": 0})
    assert r.status_code == 201, r.text
    queue_id = r.json()["id"]
    trigger = await make_trigger(client, tenant, "queue_item", queue_id=queue_id)  # max_concurrent 1: one at a time
    r = await client.post(f"/api/queues/{queue_id}/items/bulk", headers=tenant.headers,
                          json={"items": [{"data": {"n": 1}}, {"data": {"n": 2}}, {"data": {"n": 3}}]})
    assert r.status_code == 201, r.text
    reactions = reactions_of(redis, firer, settings)
    committer: Committer = app.state.api.committer
    last = await feed_log(reactions, redis, tenant.partition)
    runs = [e for e in await events_of(redis, tenant.partition, "execution.queued") if isinstance(e, ExecutionQueued)]
    assert [(e.params, e.trigger_type) for e in runs] == [({"n": 1}, "queue_item")], "one at a time"
    await complete(committer, tenant, runs[0].aggregate_id, {"paid": True})
    last = await feed_log(reactions, redis, tenant.partition, last)
    runs = [e for e in await events_of(redis, tenant.partition, "execution.queued") if isinstance(e, ExecutionQueued)]
    assert [e.params["n"] for e in runs] == [1, 2], "the next item starts when the first ends"
    await mark_running(committer, tenant, runs[1].aggregate_id)
    await mark_failed(committer, tenant, runs[1].aggregate_id, dead_letter=True)
    await feed_log(reactions, redis, tenant.partition, last)
    async with projector(settings):
        items = {i["data"]["n"]: i for i in await _items(client, tenant, queue_id)}
    assert items[1]["status"] == "completed" and items[2]["status"] == "failed"
    assert items[3]["status"] == "in_progress", "the third item's run started when the second ended"
    assert await redis.hget(keys.trigger(tenant.partition, trigger["id"]), "inflight") == b"1"


async def _items(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str) -> list[dict[str, Any]]:
    async def all_three() -> list[dict[str, Any]]:
        r = await client.get(f"/api/queues/{queue_id}/items", headers=tenant.headers)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        assert len(items) == 3 and {i["status"] for i in items} == {"completed", "failed", "in_progress"}
        return items

    return await assert_eventually(all_three)
