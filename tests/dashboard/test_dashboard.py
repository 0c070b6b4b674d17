"""What an operator sees: runs move through the table live, steps and logs stream, retry works, counters add up.

Everything happens through the API and real processes (api, two executors, projector); the page is never
reloaded, so every change on it came over the WebSocket.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.helpers import switchable_server

pytestmark = pytest.mark.slow

SLOW: dict[str, Any] = {
    "name": "slow",
    "steps": [
        {"action": "delay", "label": "wait for the robot", "params": {"ms": 2500}},
        {"action": "log", "label": "report", "params": {"message": "hello from the robot"}},
        {"action": "set", "label": "finish", "params": {"values": {"ok": True}}},
    ],
}
TIMEOUT_MS = 20_000


async def test_dashboard_follows_runs_live_and_retries(
    deployment: Deployment, admin: httpx.AsyncClient, browser: Any, tmp_path: Any
) -> None:
    from playwright.async_api import expect

    # A trial tenant runs two executions at a time: the third one visibly waits in the queue.
    created = await admin.post("/api/tenants", json={"name": "robots", "plan": "trial"})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    async with (
        httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"}) as api,
        switchable_server() as robot,
    ):
        slow = (await api.post("/api/workflows", json=SLOW)).json()["id"]
        flaky_body = {"name": "flaky", "retry": {"attempts": 1},
                      "steps": [{"action": "http_request", "label": "call the robot",
                                 "params": {"method": "GET", "url": robot["url"]}}]}
        flaky = (await api.post("/api/workflows", json=flaky_body)).json()["id"]

        page = await browser.new_page(viewport={"width": 1500, "height": 1100})
        await page.goto(deployment.base_url)
        await page.fill("#key-input", key)
        await page.click("#key-submit")
        await expect(page.locator("#conn")).to_have_text("live", timeout=TIMEOUT_MS)
        await expect(page.locator("#tenant-name")).to_contain_text("robots")

        async def execute(workflow_id: str) -> str:
            r = await api.post(f"/api/workflows/{workflow_id}/execute", json={})
            assert r.status_code == 202, r.text
            return str(r.json()["execution_id"])

        first, second = await execute(slow), await execute(slow)
        third = await execute(slow)
        row = page.locator(f'#executions tr[data-id="{third}"]')
        status = row.locator(".status")
        await expect(status).to_have_text("queued", timeout=TIMEOUT_MS)
        await row.click()
        await expect(page.locator("#detail-status")).to_have_text("queued")
        await expect(status).to_have_text("running", timeout=TIMEOUT_MS)
        steps = page.locator("#detail-steps li")
        await expect(steps).to_have_count(3, timeout=TIMEOUT_MS)
        await expect(steps.nth(0).locator(".step-status")).to_have_text("running", timeout=TIMEOUT_MS)
        await expect(page.locator("#detail-steps li.current .step-name")).to_have_text("wait for the robot")
        await expect(status).to_have_text("completed", timeout=TIMEOUT_MS)
        for n in range(3):
            await expect(steps.nth(n).locator(".step-status")).to_have_text("completed", timeout=TIMEOUT_MS)
        await expect(page.locator("#detail-logs")).to_contain_text("hello from the robot", timeout=TIMEOUT_MS)
        await expect(row.locator(".steps")).to_have_text("3/3")
        for done in (first, second):
            await expect(page.locator(f'#executions tr[data-id="{done}"] .status')).to_have_text("completed")

        # A run that fails lands in the DLQ; once the robot answers, Retry runs it again to completion.
        failing = await execute(flaky)
        flaky_row = page.locator(f'#executions tr[data-id="{failing}"]')
        await expect(flaky_row.locator(".status")).to_have_text("failed", timeout=TIMEOUT_MS)
        await expect(page.locator(f'#dlq tr[data-id="{failing}"]')).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator('[data-counter="dead_lettered"] b')).to_have_text("1")
        assert robot["calls"] == 1
        robot["status"] = 200
        await flaky_row.locator("button.retry").click()
        await expect(flaky_row.locator(".status")).to_have_text("completed", timeout=TIMEOUT_MS)
        assert robot["calls"] == 2
        await expect(page.locator(f'#dlq tr[data-id="{failing}"]')).to_have_count(0)

        # The counters were kept by the feed alone and add up.
        expected = {"queued": "0", "running": "0", "retrying": "0", "completed": "4", "failed": "0",
                    "cancelled": "0", "dead_lettered": "0"}
        for name, value in expected.items():
            await expect(page.locator(f'[data-counter="{name}"] b')).to_have_text(value, timeout=TIMEOUT_MS)
        await expect(page.locator('[data-figure="throughput"] b')).not_to_have_text("–")

        shot = tmp_path / "dashboard.png"  # docs/dashboard.png is made by test_screenshot.py
        await page.screenshot(path=str(shot), full_page=True)
        await page.close()
