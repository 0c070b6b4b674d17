"""How ``docs/dashboard.png`` is made: one page showing every view with something in it (counters and charts,
executions, the detail pane on its History tab with a past moment picked, the DLQ, triggers, a work queue with
an item's detail, robots, workflows). As a test it checks that each view is filled and nothing went wrong;
``ORQ_DASHBOARD_SCREENSHOT=docs/dashboard.png pytest -k 'screenshot and sqlite' tests/dashboard`` writes the picture.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from tests.dashboard.test_views import TIMEOUT_MS, open_dashboard
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually
from tests.queues.test_e2e import all_items

pytestmark = pytest.mark.slow

INVOICE: dict[str, Any] = {"name": "process invoice", "retry": {"attempts": 1}, "steps": [
    {"action": "log", "label": "read", "params": {"message": "invoice {{ params.invoice }}"}},
    {"action": "delay", "label": "check", "params": {"ms": 200}},
    {"action": "set", "label": "book", "params": {"values": {"booked": "{{ params.invoice }}"}}},
]}
REPORT: dict[str, Any] = {"name": "nightly report", "steps": [{"action": "delay", "params": {"ms": 30000}}]}
BROKEN: dict[str, Any] = {"name": "call the ERP", "retry": {"attempts": 1},
                          "steps": [{"action": "fail", "params": {"message": "ERP answered 503"}}]}


async def test_screenshot_of_every_view(deployment: Deployment, admin: httpx.AsyncClient, browser: Any) -> None:
    from playwright.async_api import expect

    deployment.start("trigger", name="trigger")
    created = await admin.post("/api/tenants", json={"name": "acme", "plan": "pro"})
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10) as api:
        invoice = (await api.post("/api/workflows", json=INVOICE)).json()["id"]
        report = (await api.post("/api/workflows", json=REPORT)).json()["id"]
        broken = (await api.post("/api/workflows", json=BROKEN)).json()["id"]
        queue = (await api.post("/api/queues", json={"name": "invoices", "max_retries": 1})).json()
        await api.post("/api/triggers", json={"workflow_id": invoice, "trigger_type": "queue_item",
                                              "config": {"queue_id": queue["id"]}})
        await api.post("/api/triggers", json={"workflow_id": report, "trigger_type": "schedule",
                                              "config": {"cron": "0 2 * * *", "timezone": "Europe/Madrid"}})
        await api.post("/api/triggers", json={"workflow_id": invoice, "trigger_type": "webhook"})
        robots = [(await api.post("/api/robots", json={"name": name, "pool": pool})).json()
                  for name, pool in (("desk-1", "desk"), ("desk-2", "desk"), ("scanner", "scan"))]
        for robot in robots[:2]:
            async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10,
                                         headers={"Authorization": f"Bearer {robot['robot_key']}"}) as call:
                assert (await call.post("/api/robots/tasks/next", json={"wait_s": 0})).status_code == 204

        page, watch = await open_dashboard(deployment, browser, key, 1500, 1100)
        for n in range(1, 4):
            r = await api.post(f"/api/queues/{queue['id']}/items",
                               json={"reference": f"INV-{n}", "data": {"invoice": f"INV-{n}"}})
            assert r.status_code == 201, r.text
        await api.post(f"/api/workflows/{report}/execute", json={"priority": 4})
        await api.post(f"/api/workflows/{broken}/execute", json={})

        async def items_done() -> list[dict[str, Any]]:
            rows = await all_items(api, queue["id"])
            assert sorted(x["status"] for x in rows) == ["completed"] * 3, rows
            return rows

        items = await assert_eventually(items_done, timeout=60, interval=0.3, message="the items were processed")
        first = next(x for x in items if x["reference"] == "INV-1")

        await expect(page.locator("#dlq tbody tr")).to_have_count(1, timeout=TIMEOUT_MS)
        await page.locator(f'#queues tr[data-id="{queue["id"]}"]').click()
        await page.locator(f'#queue-items tbody tr[data-id="{first["id"]}"] td').first.click()
        await expect(page.locator("#item-executions a.exec-link")).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(page.locator("#robots tbody tr")).to_have_count(3, timeout=TIMEOUT_MS)
        await expect(page.locator("#robots .robot-status.idle")).to_have_count(2, timeout=TIMEOUT_MS)

        # The processed item's run, on its History tab, as it stood after its first step.
        await page.locator("#item-executions a.exec-link").click()
        await page.click("#tab-history")
        done = page.locator('#history-list li[data-type="step.completed"]')
        await expect(done.first).to_be_visible(timeout=TIMEOUT_MS)
        await done.first.click()
        await expect(page.locator("#as-of-status")).to_have_text("running", timeout=TIMEOUT_MS)
        await expect(page.locator("#triggers tbody tr")).to_have_count(3, timeout=TIMEOUT_MS)

        if target := os.environ.get("ORQ_DASHBOARD_SCREENSHOT"):
            await page.screenshot(path=target, full_page=True)
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()
