"""Honest figures on the dashboard (issue 16, item 3): Run records a manual run, the progress bar and the steps
column count completed steps only, a cancel shows the step that was running as cancelled.

Real processes (api, executors, projector) and a headless Chromium; the page is never reloaded.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dashboard.test_dashboard import TIMEOUT_MS
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually, switchable_server

pytestmark = pytest.mark.slow


async def test_run_is_manual_and_progress_counts_completed_steps(
    deployment: Deployment, admin: httpx.AsyncClient, browser: Any
) -> None:
    from playwright.async_api import expect

    created = await admin.post("/api/tenants", json={"name": "figures", "plan": "pro"})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    async with (
        httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"}) as api,
        switchable_server() as robot,
    ):
        # Two steps that pass, then one that fails until the robot answers: it waits 4 s between attempts.
        body = {"name": "robot", "retry": {"attempts": 2, "backoff": {"type": "fixed", "delay_ms": 4000}},
                "steps": [{"action": "noop", "label": "a"}, {"action": "noop", "label": "b"},
                          {"action": "http_request", "label": "call the robot",
                           "params": {"method": "GET", "url": robot["url"]}}]}
        r = await api.post("/api/workflows", json=body)
        assert r.status_code == 201, r.text
        slow = {"name": "slow", "steps": [{"action": "noop"}, {"action": "delay", "params": {"ms": 20_000}}]}
        r = await api.post("/api/workflows", json=slow)
        assert r.status_code == 201, r.text
        slow_id = r.json()["id"]

        page = await browser.new_page(viewport={"width": 1500, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(deployment.base_url)
        await page.fill("#key-input", key)
        await page.click("#key-submit")
        await expect(page.locator("#conn")).to_have_text("live", timeout=TIMEOUT_MS)

        await page.locator("#workflow-list li", has_text="robot").locator("button.run").click()
        row = page.locator("#executions tbody tr").first
        await expect(row).to_be_visible(timeout=TIMEOUT_MS)
        execution_id = await row.get_attribute("data-id")

        async def manual() -> None:
            r = await api.get(f"/api/executions/{execution_id}")
            assert r.status_code == 200, r.text
            assert r.json()["trigger_type"] == "manual", r.json()["trigger_type"]

        await assert_eventually(manual, timeout=TIMEOUT_MS / 1000)
        await expect(row.locator(".status")).to_have_text("retrying", timeout=TIMEOUT_MS)
        # Attempt 1 failed at step 3: two steps are done, not three.
        await expect(row.locator(".steps")).to_have_text("2/3")
        width = await row.locator(".progress i").evaluate("(node) => node.style.width")
        assert width == "67%", width
        async def projected() -> None:
            retrying = (await api.get(f"/api/executions/{execution_id}")).json()
            assert (retrying["status"], retrying["progress"]) == ("retrying", 66), retrying

        await assert_eventually(projected, timeout=TIMEOUT_MS / 1000)

        robot["status"] = 200
        await expect(row.locator(".status")).to_have_text("completed", timeout=TIMEOUT_MS)
        await expect(row.locator(".steps")).to_have_text("3/3")

        # A cancel closes the running step, in the detail pane as in the API.
        r = await api.post(f"/api/workflows/{slow_id}/execute", json={})
        cancelled = r.json()["execution_id"]
        slow_row = page.locator(f'#executions tr[data-id="{cancelled}"]')
        await expect(slow_row.locator(".status")).to_have_text("running", timeout=TIMEOUT_MS)
        await slow_row.click()
        steps = page.locator("#detail-steps li")
        await expect(steps.nth(1).locator(".step-status")).to_have_text("running", timeout=TIMEOUT_MS)
        r = await api.post(f"/api/executions/{cancelled}/cancel")
        assert r.status_code == 202, r.text
        await expect(slow_row.locator(".status")).to_have_text("cancelled", timeout=TIMEOUT_MS)
        await expect(steps.nth(1).locator(".step-status")).to_have_text("cancelled", timeout=TIMEOUT_MS)
        await expect(slow_row.locator(".steps")).to_have_text("1/2")
        assert errors == []
        await page.close()
