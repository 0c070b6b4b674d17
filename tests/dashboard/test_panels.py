"""More of the dashboard in a real headless Chromium against a real deployment (800 px wide): a work-queue item's
detail with its history and the executions that processed it, parent and child executions linked both ways,
Run with params checked against the workflow's ``{{ params.* }}`` references before anything is sent, and the
"queued by priority" panel kept by the feed (the projector is stopped: nothing but events can move it).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dashboard.test_views import SLOW, TIMEOUT_MS, open_dashboard
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually
from tests.queues.test_e2e import all_items

pytestmark = pytest.mark.slow

FAILS: dict[str, Any] = {"name": "always fails", "retry": {"attempts": 1},
                         "steps": [{"action": "fail", "params": {"message": "boom"}}]}
INVOICE: dict[str, Any] = {"name": "invoice", "steps": [
    {"action": "log", "params": {"message": "invoice {{ params.invoice.number }} for {{ params.customer }}"}},
    {"action": "set", "params": {"values": {"total": "{{ params.invoice.total }}"}}},
]}


async def tenant_client(deployment: Deployment, admin: httpx.AsyncClient, plan: str) -> tuple[str, httpx.AsyncClient]:
    created = await admin.post("/api/tenants", json={"name": f"acme-{plan}", "plan": plan})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    client = httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return key, client


async def test_item_detail_family_links_and_run_params(
    deployment: Deployment, admin: httpx.AsyncClient, browser: Any
) -> None:
    from playwright.async_api import expect

    deployment.start("trigger", name="trigger")
    key, api = await tenant_client(deployment, admin, "pro")
    async with api:
        # A queue whose item's run fails: the queue retries the item once (a new item), both end failed/retried.
        failing = (await api.post("/api/workflows", json=FAILS)).json()["id"]
        queue = (await api.post("/api/queues", json={"name": "invoices", "max_retries": 1})).json()
        r = await api.post("/api/triggers", json={"workflow_id": failing, "trigger_type": "queue_item",
                                                  "config": {"queue_id": queue["id"]}})
        assert r.status_code == 201, r.text
        first = (await api.post(f"/api/queues/{queue['id']}/items",
                                json={"reference": "INV-7", "data": {"invoice": 7}})).json()["id"]

        async def settled() -> dict[str, dict[str, Any]]:
            rows = await all_items(api, queue["id"])
            assert sorted(x["status"] for x in rows) == ["failed", "retried"], rows
            return {x["id"]: x for x in rows}

        items = await assert_eventually(settled, timeout=60, interval=0.3, message="the item and its retry ended")
        retry = items[first]["retry_id"]
        run = items[first]["execution_id"]
        assert retry and run

        # A chain: "child" starts when "parent" completes (workflow_completed sets parent_execution_id).
        parent_wf = (await api.post("/api/workflows", json={"name": "parent", "steps": [
            {"action": "set", "params": {"values": {"n": 1}}}]})).json()["id"]
        child_wf = (await api.post("/api/workflows", json={"name": "child",
                                                           "steps": [{"action": "noop"}]})).json()["id"]
        r = await api.post("/api/triggers", json={"workflow_id": child_wf, "trigger_type": "workflow_completed",
                                                  "config": {"workflow_id": parent_wf}})
        assert r.status_code == 201, r.text
        invoice = (await api.post("/api/workflows", json=INVOICE)).json()["id"]

        page, watch = await open_dashboard(deployment, browser, key, 800)

        # --- the item's detail: facts, history, the execution that processed it, the retry item -----------------
        await page.locator(f'#queues tr[data-id="{queue["id"]}"]').click()
        await page.locator(f'#queue-items tbody tr[data-id="{first}"] td').first.click()
        detail = page.locator("#item-detail")
        await expect(detail).to_be_visible()
        await expect(page.locator("#item-detail-status")).to_have_text("retried", timeout=TIMEOUT_MS)
        await expect(page.locator('#item-facts dd[data-fact="reference"]')).to_have_text("INV-7")
        history = page.locator("#item-history li")
        await expect(history.first).to_contain_text("queue_item.added")
        await expect(page.locator('#item-history li[data-event="queue_item.started"]')).to_contain_text(run[:8])
        await expect(page.locator("#item-executions a.exec-link")).to_have_count(1)
        assert await page.locator("#item-executions a.exec-link").get_attribute("data-id") == run
        # The retry item is one click away, and has its own run.
        await page.locator('#item-facts dd[data-fact="retried as"] a').click()
        await expect(page.locator("#item-detail-id")).to_have_attribute("title", retry, timeout=TIMEOUT_MS)
        await expect(page.locator('#item-facts dd[data-fact="retry of"] a')).to_have_attribute("data-id", first)
        retry_run = items[retry]["execution_id"]
        await expect(page.locator("#item-executions a.exec-link")).to_have_attribute("data-id", retry_run)
        # ... which opens in the execution pane.
        await page.locator("#item-executions a.exec-link").click()
        await expect(page.locator("#detail")).to_be_visible()
        await expect(page.locator("#detail-id")).to_have_attribute("title", retry_run)
        await expect(page.locator("#detail-status")).to_have_text("failed", timeout=TIMEOUT_MS)
        box = await detail.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 800

        # --- parent and child executions, linked both ways --------------------------------------------------------
        parent = (await api.post(f"/api/workflows/{parent_wf}/execute", json={})).json()["execution_id"]

        async def child_of_parent() -> str:
            rows = (await api.get("/api/executions", params={"workflow_id": child_wf})).json()["items"]
            assert rows, "the chained run has not started"
            return str(rows[0]["id"])

        child = await assert_eventually(child_of_parent, timeout=30, interval=0.3, message="the child run")
        await page.locator(f'#executions tr[data-id="{parent}"]').click()
        await expect(page.locator("#detail-id")).to_have_attribute("title", parent)
        child_link = page.locator(f'#detail-children a.exec-link[data-id="{child}"]')
        await expect(child_link).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator("#detail-parent")).to_be_hidden()
        await child_link.click()
        await expect(page.locator("#detail-id")).to_have_attribute("title", child)
        parent_link = page.locator(f'#detail-parent a.exec-link[data-id="{parent}"]')
        await expect(parent_link).to_be_visible(timeout=TIMEOUT_MS)
        await parent_link.click()
        await expect(page.locator("#detail-id")).to_have_attribute("title", parent)

        # --- Run with params: the workflow's references are checked before anything is sent -------------------
        # Plain "Run" of a workflow that needs params opens the editor instead of starting a doomed run.
        await page.locator(f'#workflow-list button.run[data-id="{invoice}"]').click()
        await expect(page.locator("#run-form")).to_be_visible()
        needs = page.locator("#run-needs")
        await expect(needs).to_contain_text("params.customer", timeout=TIMEOUT_MS)
        await expect(needs.locator(".missing")).to_have_text("missing: customer, invoice.number, invoice.total")
        await page.fill("#run-params", '{"customer": "acme", "invoice": {"number": 7}}')
        await expect(needs.locator(".missing")).to_have_text("missing: invoice.total")
        await page.click("#run-submit")
        await expect(page.locator("#run-error")).to_contain_text("missing invoice.total")
        await expect(page.locator("#run-error")).to_contain_text("{{ params.invoice.total }}")
        await expect(page.locator("#run-result")).to_have_text("")
        listed = (await api.get("/api/executions", params={"workflow_id": invoice})).json()["items"]
        assert listed == []  # nothing was sent
        await page.fill("#run-params", '{"customer": "acme", "invoice": {"number": 7, "total": 12.5}}')
        await expect(needs.locator(".missing")).to_have_count(0)
        await page.click("#run-submit")
        await expect(page.locator("#run-result")).to_contain_text("queued", timeout=TIMEOUT_MS)
        run_id = await page.locator("#run-result").get_attribute("title")

        async def completed() -> None:
            x = (await api.get(f"/api/executions/{run_id}")).json()
            assert x.get("status") == "completed", x
            assert x["steps"][1]["output_data"] == {"total": 12.5}

        await assert_eventually(completed, timeout=30, interval=0.3, message="the run with params completed")

        assert await page.evaluate("document.documentElement.scrollWidth") <= 800
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()


async def test_queued_by_priority_follows_the_feed(
    deployment: Deployment, admin: httpx.AsyncClient, browser: Any
) -> None:
    from playwright.async_api import expect

    key, api = await tenant_client(deployment, admin, "trial")  # two runs at a time
    async with api:
        slow = (await api.post("/api/workflows", json=SLOW)).json()["id"]
        page, watch = await open_dashboard(deployment, browser, key, 800)
        await expect(page.locator(f'#workflow-list button.run[data-id="{slow}"]')).to_be_visible(timeout=TIMEOUT_MS)
        depth = page.locator('#depth .bar-row[data-priority="9"] .n')
        await expect(depth).to_have_text("0")

        # Without the projector, /api/stats stands still: only the feed's events can move the panel.
        projector = next(p for p in deployment.processes if "projector" in p.log_path.name)
        projector.terminate()
        runs = (await api.post(f"/api/workflows/{slow}/execute/bulk",
                               json={"runs": [{"priority": 9}] * 4})).json()["execution_ids"]
        assert len(runs) == 4
        await expect(depth).to_have_text("2", timeout=TIMEOUT_MS)  # two run, two wait
        await expect(page.locator('[data-counter="queued"] b')).to_have_text("2")
        stats = (await api.get("/api/stats")).json()
        assert stats["depth_by_priority"]["9"] == 0  # the projection never saw them
        # The first two finish, the other two start: the panel empties with the counters.
        await expect(depth).to_have_text("0", timeout=TIMEOUT_MS)
        await expect(page.locator('[data-counter="queued"] b')).to_have_text("0")
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()
