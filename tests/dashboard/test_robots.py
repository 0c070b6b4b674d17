"""The Robots view (DESIGN §10) in a real headless Chromium against a real deployment: each robot's name, pool,
status (idle, busy, offline), last seen and current task, kept live as a robot speaks the HTTP protocol (here
this test, acting as the robot): it polls, claims a ``runs_on`` step, completes it. 800 px, no console error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dashboard.test_views import TIMEOUT_MS, open_dashboard
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

ON_DESK: dict[str, Any] = {"name": "desk work", "steps": [
    {"action": "set", "label": "read the screen", "runs_on": "desk", "params": {"values": {"total": 12}}},
    {"action": "log", "params": {"message": "total {{ steps.0.output.total }}"}},
]}


async def test_robots_view_is_live(deployment: Deployment, admin: httpx.AsyncClient, browser: Any) -> None:
    from playwright.async_api import expect

    created = await admin.post("/api/tenants", json={"name": "rpa", "plan": "pro"})
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=10) as api:
        workflow = (await api.post("/api/workflows", json=ON_DESK)).json()["id"]
        desk = await api.post("/api/robots", json={"name": "desk-1", "pool": "desk"})
        assert desk.status_code == 201, desk.text
        silent = await api.post("/api/robots", json={"name": "night-shift", "pool": "batch"})
        assert silent.status_code == 201, silent.text
        robot = httpx.AsyncClient(base_url=deployment.base_url, timeout=40,
                                  headers={"Authorization": f"Bearer {desk.json()['robot_key']}"})
        page, watch = await open_dashboard(deployment, browser, key, 800)
        async with robot:
            row = page.locator(f'#robots tr[data-id="{desk.json()["id"]}"]')
            await expect(row.locator(".name")).to_have_text("desk-1", timeout=TIMEOUT_MS)
            await expect(row.locator(".pool")).to_have_text("desk")
            quiet = page.locator(f'#robots tr[data-id="{silent.json()["id"]}"]')
            await expect(quiet.locator(".robot-status")).to_have_text("offline")
            await expect(quiet.locator(".seen")).to_have_text("never")

            # The robot calls in: idle, seen just now.
            r = await robot.post("/api/robots/tasks/next", json={"wait_s": 0})
            assert r.status_code == 204, r.text
            await expect(row.locator(".robot-status")).to_have_text("idle", timeout=TIMEOUT_MS)
            await expect(row.locator(".seen")).to_contain_text("s ago")

            # A runs_on step is offered; the robot takes it: busy, on that execution's step.
            run = (await api.post(f"/api/workflows/{workflow}/execute", json={})).json()["execution_id"]
            r = await robot.post("/api/robots/tasks/next", json={"wait_s": 20})
            assert r.status_code == 200, r.text
            task = r.json()
            assert task["execution_id"] == run and task["step_index"] == 0
            await expect(row.locator(".robot-status")).to_have_text("busy", timeout=TIMEOUT_MS)
            await expect(row.locator(f'.task a.exec-link[data-id="{run}"]')).to_be_visible(timeout=TIMEOUT_MS)

            # It finishes: idle again, no current task; the run goes on and completes.
            r = await robot.post(f"/api/robots/tasks/{task['task_id']}/complete", json={"output": {"total": 12}})
            assert r.status_code in (200, 204), r.text
            await expect(row.locator(".robot-status")).to_have_text("idle", timeout=TIMEOUT_MS)
            await expect(row.locator(".task")).to_have_text("–")

            async def completed() -> None:
                assert (await api.get(f"/api/executions/{run}")).json()["status"] == "completed"

            await assert_eventually(completed, timeout=30, interval=0.3, message="the run completed")
            await expect(page.locator(f'#executions tr[data-id="{run}"] .status')).to_have_text("completed",
                                                                                              timeout=TIMEOUT_MS)
        await expect(page.locator("#robots-note")).to_contain_text("2 robot(s)")
        assert await page.evaluate("document.documentElement.scrollWidth") <= 800
        assert watch.errors == [], watch.errors
        assert watch.bad == [], watch.bad
        await page.close()
