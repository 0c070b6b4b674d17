"""One owner for retrying a queue item's failed run: the queue (DESIGN §8), through real ``orq`` processes.

A run that fails for good is dead-lettered by the executor; the trigger service takes it out of the DLQ in the
unit that fails its item (and retries the item while the queue allows), so the DLQ never offers a second retry
of the same work. The item's history names the execution that processed it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually
from tests.queues.test_e2e import all_items

pytestmark = pytest.mark.slow


async def test_a_failing_queue_item_run_is_retried_by_the_queue_only(
    deployment: Deployment, tenant: httpx.AsyncClient
) -> None:
    deployment.start("trigger", name="trigger")
    r = await tenant.post("/api/workflows", json={"name": "always fails", "retry": {"attempts": 1},
                                                  "steps": [{"action": "fail", "params": {"message": "boom"}}]})
    assert r.status_code == 201, r.text
    workflow_id = r.json()["id"]
    queue = (await tenant.post("/api/queues", json={"name": "invoices", "max_retries": 1})).json()
    r = await tenant.post("/api/triggers", json={"workflow_id": workflow_id, "trigger_type": "queue_item",
                                                 "config": {"queue_id": queue["id"]}})
    assert r.status_code == 201, r.text
    r = await tenant.post(f"/api/queues/{queue['id']}/items", json={"data": {"invoice": 7}})
    assert r.status_code == 201, r.text
    first = r.json()["id"]

    async def settled() -> list[dict[str, Any]]:
        rows = await all_items(tenant, queue["id"])
        assert sorted(r["status"] for r in rows) == ["failed", "retried"], rows
        return rows

    rows = await assert_eventually(settled, timeout=60, interval=0.3, message="the item and its one retry ended")
    by_id = {r["id"]: r for r in rows}
    retry = by_id[first]["retry_id"]
    assert by_id[retry]["retry_of"] == first
    runs = [by_id[first]["execution_id"], by_id[retry]["execution_id"]]
    assert all(runs) and runs[0] != runs[1]

    async def dlq_empty_and_runs_counted() -> None:
        r = await tenant.get("/api/dlq")
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [], r.json()  # the queue retried: the DLQ offers no second retry
        r = await tenant.get("/api/executions", params={"workflow_id": workflow_id, "limit": 50})
        assert r.status_code == 200, r.text
        executions = r.json()["items"]
        assert sorted(e["id"] for e in executions) == sorted(runs)  # one run per item, no more
        assert all(e["status"] == "failed" for e in executions)

    await assert_eventually(dlq_empty_and_runs_counted, timeout=30, interval=0.3, message="no DLQ entries")
    r = await tenant.post(f"/api/dlq/{runs[0]}/retry")
    assert r.status_code in (404, 409), r.text

    # The item's history names the execution that processed it; its retry names its own.
    for item_id, run in ((first, runs[0]), (retry, runs[1])):
        r = await tenant.get(f"/api/queues/{queue['id']}/items/{item_id}")
        assert r.status_code == 200, r.text
        started = [h for h in r.json()["history"] if h["event"] == "queue_item.started"]
        assert [h["detail"] for h in started] == [f"execution {run}"], r.json()["history"]
