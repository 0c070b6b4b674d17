"""Work queues through real ``orq`` processes: a ``queue_item``-triggered workflow works 100 items one at a time,
and robots over HTTP share a queue; SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


async def all_items(client: httpx.AsyncClient, queue_id: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await client.get(f"/api/queues/{queue_id}/items",
                             params={"limit": 200, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        rows += r.json()["items"]
        if not (cursor := r.json()["next_cursor"]):
            return rows


async def test_queue_item_trigger_works_100_items_one_at_a_time(
    deployment: Deployment, tenant: httpx.AsyncClient
) -> None:
    deployment.start("trigger", name="trigger")
    r = await tenant.post("/api/workflows", json={"name": "book invoice", "steps": [
        {"action": "delay", "params": {"ms": 10}},
        {"action": "set", "params": {"values": {"booked": "{{ params.invoice }}"}}},
    ]})
    assert r.status_code == 201, r.text
    workflow_id = r.json()["id"]
    queue = (await tenant.post("/api/queues", json={"name": "invoices"})).json()
    r = await tenant.post("/api/triggers", json={"workflow_id": workflow_id, "trigger_type": "queue_item",
                                                 "config": {"queue_id": queue["id"], "max_concurrent": 1}})
    assert r.status_code == 201, r.text

    r = await tenant.post(f"/api/queues/{queue['id']}/items/bulk",
                          json={"items": [{"data": {"invoice": n}} for n in range(100)]})
    assert r.status_code == 201, r.text

    async def all_completed() -> list[dict[str, Any]]:
        rows = await all_items(tenant, queue["id"], status="completed")
        assert len(rows) == 100, len(rows)
        return rows

    rows = await assert_eventually(all_completed, timeout=120, interval=0.5, message="100 items completed")
    assert all(r["execution_id"] and r["result"] for r in rows)
    windows = sorted((ms(r["started_at"]), ms(r["finished_at"])) for r in rows)
    assert all(nxt[0] >= prev[1] for prev, nxt in zip(windows, windows[1:], strict=False)), "two items overlapped"
    executions = {r["execution_id"] for r in rows}
    assert len(executions) == 100
    one = rows[0]
    execution = (await tenant.get(f"/api/executions/{one['execution_id']}")).json()
    assert execution["status"] == "completed" and execution["trigger_type"] == "queue_item"
    assert one["result"] == execution["result"] and execution["result"] is not None
    assert all(r["processed_by"] and r["processed_by"].startswith("trigger:") for r in rows)
    stats = (await tenant.get(f"/api/queues/{queue['id']}/stats")).json()
    assert (stats["completed"], stats["new"], stats["in_progress"]) == (100, 0, 0)


async def test_robots_share_a_queue_over_http(deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    queue = (await tenant.post("/api/queues", json={"name": "orders", "max_retries": 1})).json()
    r = await tenant.post(f"/api/queues/{queue['id']}/items/bulk",
                          json={"items": [{"data": {"order": n}, "reference": f"O-{n}"} for n in range(60)]})
    assert r.status_code == 201

    async def robot(name: str) -> list[str]:
        seen = []
        while True:
            r = await tenant.post(f"/api/queues/{queue['id']}/items/next", json={"robot": name})
            if r.status_code == 204:
                return seen
            item = r.json()
            seen.append(item["id"])
            failing = item["data"]["order"] % 10 == 0 and item["retry_count"] == 0
            body: dict[str, Any] = ({"status": "failed", "error": {"message": "portal down", "kind": "application"}}
                                    if failing else {"status": "completed", "result": {"by": name}})
            assert (await tenant.put(f"/api/queues/{queue['id']}/items/{item['id']}", json=body)).status_code == 200

    claimed = await asyncio.gather(*(robot(f"robot-{n}") for n in range(4)))
    flat = [i for ids in claimed for i in ids]
    assert len(flat) == len(set(flat)) == 66  # 60 items and 6 retries, each claimed once

    async def settled() -> None:
        stats = (await tenant.get(f"/api/queues/{queue['id']}/stats")).json()
        assert (stats["completed"], stats["retried"], stats["new"], stats["in_progress"]) == (60, 6, 0, 0), stats

    await assert_eventually(settled, timeout=30, interval=0.3, message="stats projected")
    done = await all_items(tenant, queue["id"], reference="O-10")
    assert [d["status"] for d in done] == ["completed", "retried"] and done[0]["retry_of"] == done[1]["id"]
