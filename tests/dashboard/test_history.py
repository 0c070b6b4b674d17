"""The execution detail's History tab (DESIGN §11) in a real headless Chromium against a real deployment: the
execution's events as a timeline, equal to ``GET /api/executions/{id}/events``, and the execution as it stood at
any of them (``GET /api/executions/{id}?as_of=<stream id>``), picked from the list or with the slider; events
that arrive while the tab is open join the timeline. 800 px, no console error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dashboard.test_views import TIMEOUT_MS, open_dashboard
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

THREE: dict[str, Any] = {"name": "three steps", "steps": [
    {"action": "log", "label": "hello", "params": {"message": "hello"}},
    {"action": "delay", "label": "pause", "params": {"ms": 3000}},
    {"action": "set", "label": "answer", "params": {"values": {"answer": 42}}},
]}


async def all_events(api: httpx.AsyncClient, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await api.get(f"/api/executions/{execution_id}/events", params={"cursor": cursor} if cursor else {})
        assert r.status_code == 200, r.text
        events += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return events


async def test_history_tab_and_time_travel(deployment: Deployment, admin: httpx.AsyncClient, browser: Any) -> None:
    from playwright.async_api import expect

    created = await admin.post("/api/tenants", json={"name": "historians", "plan": "pro"})
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10) as api:
        workflow = (await api.post("/api/workflows", json=THREE)).json()["id"]
        page, watch = await open_dashboard(deployment, browser, key, 800)
        run = (await api.post(f"/api/workflows/{workflow}/execute", json={})).json()["execution_id"]

        # The tab opened while the run is in its pause: what happens next joins the timeline live.
        row = page.locator(f'#executions tr[data-id="{run}"]')
        await expect(row.locator(".status")).to_have_text("running", timeout=TIMEOUT_MS)
        await row.click()
        await expect(page.locator("#tab-history")).to_be_visible()
        await page.click("#tab-history")
        await expect(page.locator("#pane-history")).to_be_visible()
        await expect(page.locator("#pane-overview")).to_be_hidden()
        items = page.locator("#history-list li")
        await expect(items.first).to_have_attribute("data-type", "execution.queued", timeout=TIMEOUT_MS)

        async def completed() -> list[dict[str, Any]]:
            assert (await api.get(f"/api/executions/{run}")).json()["status"] == "completed"
            events = await all_events(api, run)
            assert events[-1]["type"] == "execution.completed", events
            return events

        events = await assert_eventually(completed, timeout=30, interval=0.3, message="the run completed")

        # The timeline is the API's list of events, in its order.
        await expect(items).to_have_count(len(events), timeout=TIMEOUT_MS)
        shown = await page.eval_on_selector_all("#history-list li", "ls => ls.map(l => [l.dataset.id, l.dataset.type])")
        assert [tuple(x) for x in shown] == [(e["id"], e["type"]) for e in events]

        # Picking an event shows the run as it stood then, as the API folds it.
        first_done = next(i for i, e in enumerate(events) if e["type"] == "step.completed")
        await items.nth(first_done).click()
        await expect(page.locator("#as-of")).to_be_visible()
        expected = (await api.get(f"/api/executions/{run}", params={"as_of": events[first_done]["id"]})).json()
        assert expected["status"] == "running" and expected["steps_completed"] == 1
        await expect(page.locator("#as-of-status")).to_have_text("running", timeout=TIMEOUT_MS)
        await expect(page.locator("#as-of-progress")).to_have_text("1 of 3 completed")
        await expect(page.locator('#as-of-steps li[data-step="0"] .step-status')).to_have_text("completed")
        await expect(items.nth(first_done)).to_have_class("picked")

        # The slider walks the same events: the first (queued), then the last (completed).
        async def slide(index: int) -> None:
            await page.eval_on_selector("#history-slider", """(s, i) => { s.value = String(i);
                                        s.dispatchEvent(new Event('input', {bubbles: true})); }""", index)

        await slide(0)
        await expect(page.locator("#as-of-status")).to_have_text("queued", timeout=TIMEOUT_MS)
        await expect(page.locator("#as-of-progress")).to_have_text("0 of 3 completed")
        await expect(page.locator("#as-of-title")).to_contain_text(f"event 1 of {len(events)}: execution.queued")
        await slide(len(events) - 1)
        await expect(page.locator("#as-of-status")).to_have_text("completed", timeout=TIMEOUT_MS)
        await expect(page.locator("#as-of-progress")).to_have_text("3 of 3 completed")

        # The tab's layout holds at 800 px (the pane is under the table there).
        box = await page.locator("#detail").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 800
        assert await page.evaluate("document.documentElement.scrollWidth") <= 800
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()
