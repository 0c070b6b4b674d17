"""What the projection shows of work queues: item lists (filters, pages), an item's history, and stats (counts,
processing time, SLA breaches, items at risk); and 100 items processed one after another by one robot."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.routes.queues import queue_stats
from shared.domain.queues.definitions import read_queue
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from tests.api.support import TenantHandle, projector
from tests.api.test_queues import make_queue
from tests.api.test_queues_items import add, claim, finish
from tests.helpers import assert_eventually


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


async def items_of(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/queues/{queue_id}/items", params=params, headers=tenant.headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def test_one_hundred_items_processed_one_after_another(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    r = await client.post(f"/api/queues/{q['id']}/items/bulk",
                          json={"items": [{"data": {"n": n}} for n in range(100)]}, headers=tenant.headers)
    ids = r.json()["ids"]
    done = []
    while (item := await claim(client, tenant, q["id"], robot="robot-1")) is not None:
        r = await finish(client, tenant, q["id"], item["id"], status="completed", result={"n2": item["data"]["n"] * 2})
        assert r.status_code == 200, r.text
        done.append(item["id"])
    assert done == ids  # the bulk's order

    async with projector(settings):

        async def all_completed() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = await items_of(client, tenant, q["id"], status="completed", limit=40,
                                      **({"cursor": cursor} if cursor else {}))
                rows += page["items"]
                if not (cursor := page["next_cursor"]):
                    break
            assert len(rows) == 100
            return rows

        rows = await assert_eventually(all_completed, timeout=20, message="100 completed items projected")
    windows = sorted((ms(r["started_at"]), ms(r["finished_at"])) for r in rows)
    assert all(start <= end for start, end in windows)
    assert all(nxt[0] >= prev[1] for prev, nxt in zip(windows, windows[1:], strict=False)), "windows overlap"
    assert {r["result"]["n2"] for r in rows} == {2 * n for n in range(100)}
    stats = (await client.get(f"/api/queues/{q['id']}/stats", headers=tenant.headers)).json()
    assert (stats["completed"], stats["new"], stats["in_progress"], stats["failed"]) == (100, 0, 0, 0)
    assert stats["avg_processing_ms"] >= 0 and stats["sla_breaches"] == 0


async def test_item_detail_with_its_history_and_list_filters(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant, max_retries=1)
    first = await add(client, tenant, q["id"], data={"invoice": 1}, reference="INV-1")
    await asyncio.sleep(0.002)  # claims go oldest first by millisecond, then by id: make "first" the oldest
    await add(client, tenant, q["id"], data={"invoice": 2}, reference="INV-2")
    await claim(client, tenant, q["id"], robot="robot-9")
    await finish(client, tenant, q["id"], first["id"], status="in_progress", progress="logged in")
    failed = (await finish(client, tenant, q["id"], first["id"], status="failed",
                           error={"message": "SAP timeout", "kind": "application"})).json()
    retry_id = failed["retry_id"]

    async with projector(settings):

        async def projected() -> dict[str, Any]:
            r = await client.get(f"/api/queues/{q['id']}/items/{first['id']}", headers=tenant.headers)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            assert len(body["history"]) == 5
            return body

        detail = await assert_eventually(projected, timeout=15, message="item history projected")
        assert [(h["event"], h["status"]) for h in detail["history"]] == [
            ("queue_item.added", "new"), ("queue_item.started", "in_progress"),
            ("queue_item.progress", "in_progress"), ("queue_item.failed", "failed"),
            ("queue_item.retried", "retried"),
        ]
        assert detail["history"][1]["processed_by"] == "robot-9"
        assert detail["history"][3]["detail"] == "application: SAP timeout"
        assert detail["status"] == "retried" and detail["retry_id"] == retry_id
        assert detail["data"] == {"invoice": 1} and detail["error"] == {"message": "SAP timeout",
                                                                        "kind": "application"}

        async def retry_listed() -> None:
            page = await items_of(client, tenant, q["id"], reference="INV-1")
            assert [(i["id"], i["status"]) for i in page["items"]] == [(retry_id, "new"), (first["id"], "retried")]

        await assert_eventually(retry_listed, timeout=15, message="retry projected")
    retry = (await client.get(f"/api/queues/{q['id']}/items/{retry_id}", headers=tenant.headers)).json()
    assert retry["retry_of"] == first["id"] and retry["retry_count"] == 1 and retry["data"] == {"invoice": 1}
    assert [i["reference"] for i in (await items_of(client, tenant, q["id"], status="new"))["items"]] == [
        "INV-1", "INV-2"]
    for params in ({"status": "done"}, {"limit": 0}, {"cursor": "garbage!"}, {"reference": "x" * 201}):
        r = await client.get(f"/api/queues/{q['id']}/items", params=params, headers=tenant.headers)
        assert r.status_code == 422, (params, r.text)
    r = await client.get(f"/api/queues/{q['id']}/items/{first['id']}", headers=other_tenant.headers)
    assert r.status_code == 404


async def test_stats_count_breaches_and_items_at_risk(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, settings: Settings, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant, sla_minutes=10, max_retries=0)
    for _ in range(3):
        await add(client, tenant, q["id"])
    # Finish whichever item each claim hands out: items added in the same millisecond are claimed in id order,
    # not in the order they were added.
    for body in ({"status": "completed"}, {"status": "failed", "error": {"message": "x", "kind": "business"}}):
        claimed = await claim(client, tenant, q["id"])
        assert claimed is not None
        assert (await finish(client, tenant, q["id"], claimed["id"], **body)).status_code == 200
    await claim(client, tenant, q["id"])  # the third one: in progress

    async with projector(settings):

        async def counted() -> dict[str, Any]:
            r = await client.get(f"/api/queues/{q['id']}/stats", headers=tenant.headers)
            stats: dict[str, Any] = r.json()
            assert (stats["completed"], stats["failed"], stats["in_progress"], stats["new"]) == (1, 1, 1, 0)
            return stats

        stats = await assert_eventually(counted, timeout=15, message="stats projected")
    assert stats["sla_breaches"] == 0 and stats["at_risk"] == 0 and stats["avg_processing_ms"] >= 0
    queue = await read_queue(redis, tenant.partition, q["id"])
    assert queue is not None
    async with engine.connect() as conn:
        # 9 minutes on: the open item is in the last fifth of its 10-minute SLA.
        later = await queue_stats(conn, queue, now_ms() + 9 * 60_000)
        assert (later.sla_breaches, later.at_risk) == (0, 1)
        assert later.at_risk_items[0].status == "in_progress" and later.at_risk_items[0].sla_due_at
        # 11 minutes on: it has breached; the finished ones finished in time.
        much_later = await queue_stats(conn, queue, now_ms() + 11 * 60_000)
        assert (much_later.sla_breaches, much_later.at_risk) == (1, 0)
