"""The dashboard's other views, in a real headless Chromium against a real deployment: triggers, work queues and
their items, Run with params, filters and search, the plan's priority menu, confirmations before destructive
commands, an 800 px and a phone-width layout, no console errors and no 404 (favicon included).

Data is created through the API after the page opened: what the views show arrived over the event feed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.slow

TIMEOUT_MS = 20_000
SLOW: dict[str, Any] = {"name": "slow", "steps": [{"action": "delay", "label": "wait", "params": {"ms": 4000}}]}
QUICK: dict[str, Any] = {"name": "quick", "steps": [{"action": "log", "params": {"message": "hi {{ params.who }}"}}]}
BROKEN: dict[str, Any] = {"name": "broken", "retry": {"attempts": 1},
                          "steps": [{"action": "fail", "params": {"message": "boom"}}]}


class Watch:
    """Console errors, uncaught exceptions, 4xx/5xx responses and dialogs of one page; dialogs are answered
    with ``self.answer`` (True: accept)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.bad: list[str] = []
        self.dialogs: list[str] = []
        self.answer = False
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("response", lambda r: self.bad.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if self.answer:
            await dialog.accept()
        else:
            await dialog.dismiss()


async def open_dashboard(deployment: Deployment, browser: Any, key: str, width: int, height: int = 1000) -> Any:
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": width, "height": height})
    watch = Watch(page)
    await page.goto(deployment.base_url)
    await page.fill("#key-input", key)
    await page.click("#key-submit")
    await expect(page.locator("#conn")).to_have_text("live", timeout=TIMEOUT_MS)
    return page, watch


async def box(locator: Any) -> dict[str, float]:
    b = await locator.bounding_box()
    assert b is not None, "element not rendered"
    return dict(b)


async def assert_inside(inner: Any, outer: Any) -> None:
    """``inner`` lies wholly inside ``outer`` horizontally (not cut off, not scrolled away)."""
    i, o = await box(inner), await box(outer)
    assert i["width"] > 0
    assert o["x"] - 0.5 <= i["x"] and i["x"] + i["width"] <= o["x"] + o["width"] + 0.5, (i, o)


async def assert_no_overlap(page: Any, selector: str) -> None:
    boxes = [b for b in await page.eval_on_selector_all(
        selector, "els => els.filter(e => e.offsetParent).map(e => { const r = e.getBoundingClientRect();"
                  " return [r.left, r.top, r.right, r.bottom, e.textContent.trim()]; })")]
    for n, a in enumerate(boxes):
        for b in boxes[n + 1:]:
            apart = a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] + 0.5 or b[3] <= a[1] + 0.5
            assert apart, f"{a[4]!r} overlaps {b[4]!r}: {a[:4]} {b[:4]}"


async def test_views_at_800px(deployment: Deployment, admin: httpx.AsyncClient, browser: Any) -> None:
    from playwright.async_api import expect

    created = await admin.post("/api/tenants", json={"name": "acme", "plan": "trial"})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10) as api:
        slow = (await api.post("/api/workflows", json=SLOW)).json()["id"]
        quick = (await api.post("/api/workflows", json=QUICK)).json()["id"]
        broken = (await api.post("/api/workflows", json=BROKEN)).json()["id"]

        page, watch = await open_dashboard(deployment, browser, key, 800)

        # The priority menus offer what the trial plan allows (6 to 10), not 1 to 10.
        options = await page.eval_on_selector_all("#priority-select option", "os => os.map(o => o.value)")
        assert options == ["6", "7", "8", "9", "10"]
        run_options = await page.eval_on_selector_all("#run-priority option", "os => os.map(o => o.value)")
        assert run_options == ["", "6", "7", "8", "9", "10"]

        # --- triggers: created after the page opened, so the view is kept by the feed ---------------------------
        config = {"cron": "0 9 * * 1-5", "timezone": "Europe/Madrid"}
        schedule = await api.post("/api/triggers", json={"workflow_id": quick, "trigger_type": "schedule",
                                                         "config": config})
        assert schedule.status_code == 201, schedule.text
        sched = schedule.json()
        assert len(sched["next_fire_times"]) == 5
        hook = await api.post("/api/triggers", json={"workflow_id": quick, "trigger_type": "webhook"})
        assert hook.status_code == 201, hook.text
        hook_json = hook.json()
        sched_row = page.locator(f'#triggers tr[data-id="{sched["id"]}"]')
        await expect(sched_row.locator(".fires div")).to_have_count(5, timeout=TIMEOUT_MS)
        await expect(sched_row).to_contain_text("0 9 * * 1-5 Europe/Madrid")
        await expect(sched_row.locator(".fires div").first).to_contain_text("09:00")
        await expect(sched_row.locator(".count")).to_have_text("0")
        await expect(sched_row.locator(".last")).to_have_text("never")
        hook_row = page.locator(f'#triggers tr[data-id="{hook_json["id"]}"]')
        await expect(hook_row).to_contain_text("quick")
        fired = await api.post(hook_json["webhook_url"].replace(deployment.base_url, ""), json={"who": "hook"})
        assert fired.status_code in (200, 202), fired.text
        await expect(hook_row.locator(".count")).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(hook_row.locator(".last")).not_to_have_text("never")

        # Disable, then enable again: a disabled schedule has no next fire times.
        await sched_row.locator("button.toggle").click()
        await expect(sched_row.locator(".enabled")).to_have_text("off", timeout=TIMEOUT_MS)
        await expect(sched_row.locator(".fires")).to_have_text("–")
        assert (await api.get(f"/api/triggers/{sched['id']}")).json()["enabled"] is False
        await sched_row.locator("button.toggle").click()
        await expect(sched_row.locator(".enabled")).to_have_text("on", timeout=TIMEOUT_MS)
        await expect(sched_row.locator(".fires div")).to_have_count(5)

        # --- work queues and their items by status --------------------------------------------------------------
        queue = await api.post("/api/queues", json={"name": "invoices"})
        assert queue.status_code == 201, queue.text
        queue_id = queue.json()["id"]
        for ref in ("INV-1", "INV-2"):
            added = await api.post(f"/api/queues/{queue_id}/items", json={"reference": ref, "data": {"n": ref}})
            assert added.status_code == 201, added.text
        queue_row = page.locator(f'#queues tr[data-id="{queue_id}"]')
        await expect(queue_row).to_contain_text("invoices", timeout=TIMEOUT_MS)
        await expect(queue_row.locator("td").nth(1)).to_have_text("2", timeout=TIMEOUT_MS)
        await queue_row.click()
        items = page.locator("#queue-items tbody tr")
        await expect(items).to_have_count(2, timeout=TIMEOUT_MS)
        await expect(page.locator("#queue-items")).to_contain_text("INV-1")
        # A third item arrives live; the status filter asks the API.
        added = await api.post(f"/api/queues/{queue_id}/items", json={"reference": "INV-3", "data": {}})
        assert added.status_code == 201, added.text
        await expect(items).to_have_count(3, timeout=TIMEOUT_MS)
        await page.select_option("#item-status", "completed")
        await expect(items).to_have_count(0, timeout=TIMEOUT_MS)
        await page.select_option("#item-status", "new")
        await expect(items).to_have_count(3, timeout=TIMEOUT_MS)

        # --- Run with params -------------------------------------------------------------------------------------
        await page.locator(f'#workflow-list button.run-params[data-id="{quick}"]').click()
        await expect(page.locator("#run-form")).to_be_visible()
        await page.fill("#run-params", '{"who": ')
        await page.click("#run-submit")
        await expect(page.locator("#run-error")).to_contain_text("not valid JSON")
        await page.fill("#run-params", "[1, 2]")
        await page.click("#run-submit")
        await expect(page.locator("#run-error")).to_contain_text("must be a JSON object")
        await page.fill("#run-params", '{"who": "dashboard"}')
        await page.select_option("#run-priority", "7")
        await page.click("#run-submit")
        await expect(page.locator("#run-result")).to_contain_text("queued", timeout=TIMEOUT_MS)
        run_id = await page.locator("#run-result").get_attribute("title")
        assert run_id
        run = (await api.get(f"/api/executions/{run_id}")).json()
        assert run["priority"] == 7 and run["trigger_type"] == "manual"

        # --- filters, search, the 800 px layout -------------------------------------------------------------------
        long_run = (await api.post(f"/api/workflows/{slow}/execute", json={})).json()["execution_id"]
        row = page.locator(f'#executions tr[data-id="{long_run}"]')
        await expect(row.locator(".status")).to_have_text("running", timeout=TIMEOUT_MS)
        cancel = row.locator("button.cancel")
        await expect(cancel).to_be_visible()
        await assert_inside(cancel, page.locator("#executions"))
        await assert_inside(page.locator("#executions"), page.locator("#executions").locator("xpath=ancestor::section"))
        assert (await box(cancel))["x"] + (await box(cancel))["width"] <= 800
        assert await page.evaluate("document.documentElement.scrollWidth") <= 800
        await assert_no_overlap(page, ".card-head.filters > *")
        await assert_no_overlap(page, ".counter")

        await page.select_option("#workflow-filter", slow)
        await expect(page.locator("#executions tbody tr")).to_have_count(1, timeout=TIMEOUT_MS)
        await page.select_option("#workflow-filter", "")
        await page.select_option("#trigger-filter", "manual")
        await expect(page.locator("#executions tbody tr")).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(page.locator(f'#executions tr[data-id="{run_id}"]')).to_be_visible()
        await page.select_option("#trigger-filter", "")
        await page.fill("#search-id", long_run[:8])
        await expect(page.locator("#executions tbody tr")).to_have_count(1, timeout=TIMEOUT_MS)
        await page.fill("#search-id", "")

        # --- confirmations: dismissed, nothing happens; accepted, the run is cancelled ---------------------------
        watch.answer = False
        await cancel.click()
        assert watch.dialogs and "Cancel execution" in watch.dialogs[-1], watch.dialogs
        await asyncio.sleep(0.5)
        assert (await api.get(f"/api/executions/{long_run}")).json()["status"] == "running"
        watch.answer = True
        await cancel.click()
        await expect(row.locator(".status")).to_have_text("cancelled", timeout=TIMEOUT_MS)
        assert len(watch.dialogs) == 2

        failing = (await api.post(f"/api/workflows/{broken}/execute", json={})).json()["execution_id"]
        dlq_row = page.locator(f'#dlq tr[data-id="{failing}"]')
        await expect(dlq_row).to_be_visible(timeout=TIMEOUT_MS)
        watch.answer = False
        await dlq_row.locator("button.dlq-purge").click()
        assert "Purge execution" in watch.dialogs[-1]
        await asyncio.sleep(0.5)
        await expect(dlq_row).to_be_visible()
        watch.answer = True
        await dlq_row.locator("button.dlq-purge").click()
        await expect(dlq_row).to_have_count(0, timeout=TIMEOUT_MS)

        watch.answer = False
        await hook_row.locator("button.trigger-delete").click()
        assert "Delete trigger" in watch.dialogs[-1]
        assert (await api.get(f"/api/triggers/{hook_json['id']}")).status_code == 200
        watch.answer = True
        await hook_row.locator("button.trigger-delete").click()
        await expect(hook_row).to_have_count(0, timeout=TIMEOUT_MS)
        assert len(watch.dialogs) == 6

        # Nothing went wrong so far: no console error, no refused request, no /favicon.ico 404.
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        icon = await page.get_attribute('link[rel="icon"]', "href")
        assert icon and icon.startswith("data:image/svg+xml")

        # A refusal by the API (here a priority outside the plan, from a stale menu) is shown as it says it.
        await page.evaluate("""() => { const s = document.querySelector('#run-priority');
                                       s.append(new Option('1', '1')); s.value = '1'; }""")
        await page.click("#run-submit")
        await expect(page.locator("#run-error")).to_contain_text("422")
        await expect(page.locator("#run-error")).to_contain_text("priorit")
        assert all("422" in e for e in watch.errors), watch.errors
        await page.close()


async def test_phone_width(deployment: Deployment, admin: httpx.AsyncClient, browser: Any) -> None:
    from playwright.async_api import expect

    created = await admin.post("/api/tenants", json={"name": "pocket", "plan": "pro"})
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10) as api:
        slow = (await api.post("/api/workflows", json=SLOW)).json()["id"]
        page, watch = await open_dashboard(deployment, browser, key, 390, 844)
        options = await page.eval_on_selector_all("#priority-select option", "os => os.map(o => o.value)")
        assert options == [str(p) for p in range(3, 11)]
        run_id = (await api.post(f"/api/workflows/{slow}/execute", json={})).json()["execution_id"]
        row = page.locator(f'#executions tr[data-id="{run_id}"]')
        await expect(row.locator("button.cancel")).to_be_visible(timeout=TIMEOUT_MS)
        await assert_inside(row.locator("button.cancel"), page.locator("#executions"))
        cancel = await box(row.locator("button.cancel"))
        assert cancel["x"] + cancel["width"] <= 390
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await assert_no_overlap(page, ".card-head.filters > *")
        await assert_no_overlap(page, ".counter")
        await row.click()
        await expect(page.locator("#detail")).to_be_visible()
        detail = await box(page.locator("#detail"))
        assert detail["x"] >= 0 and detail["x"] + detail["width"] <= 390
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()
