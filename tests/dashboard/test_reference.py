"""The API reference at ``/reference`` in a real headless Chromium: ``/openapi.json`` rendered as a readable list
of operations (every one of them, with parameters, request bodies and responses), reached from the dashboard's
"API" link, usable at 800 px, no console error, no request but the page's own (no CDN)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dashboard.test_views import TIMEOUT_MS, Watch, open_dashboard
from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.slow

METHODS = {"get", "post", "put", "patch", "delete"}


async def test_reference_renders_every_operation(
    deployment: Deployment, admin: httpx.AsyncClient, browser: Any
) -> None:
    from playwright.async_api import expect

    doc = (await admin.get("/openapi.json")).json()
    operations = [(m, path) for path, ops in doc["paths"].items() for m in ops if m in METHODS]
    assert ("get", "/reference") in operations

    created = await admin.post("/api/tenants", json={"name": "readers", "plan": "pro"})
    key = created.json()["api_key"]
    page, watch = await open_dashboard(deployment, browser, key, 800)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))

    # The dashboard's "API" link opens the readable reference, not raw JSON.
    link = page.locator("header a#api-link")
    assert await link.get_attribute("href") == "/reference"
    await link.click()
    await page.wait_for_url(f"{deployment.base_url}/reference")
    ops = page.locator("#ref-ops details.op")
    await expect(ops).to_have_count(len(operations), timeout=TIMEOUT_MS)
    rendered = await page.eval_on_selector_all(
        "#ref-ops details.op", "ds => ds.map(d => [d.dataset.method, d.dataset.path])")
    assert sorted(map(tuple, rendered)) == sorted(operations)
    await expect(page.locator("#ref-count")).to_have_text(f"{len(operations)} operation(s)")

    # One operation, opened: its parameters (path, query, header), body fields and responses.
    execute = page.locator('details.op[data-method="post"][data-path="/api/workflows/{id}/execute"]')
    await execute.locator(":scope > summary").click()
    params = execute.locator("table.params")
    await expect(params.locator('tr[data-param="id"]')).to_contain_text("path")
    await expect(params.locator('tr[data-param="Idempotency-Key"]')).to_contain_text("header")
    body = execute.locator(".request-body")
    await expect(body.locator('tr[data-field="params"]')).to_be_visible()
    await expect(body.locator('tr[data-field="priority"]')).to_contain_text("integer")
    for status in ("202", "401", "404", "422", "429"):
        await expect(execute.locator(f'.responses li[data-status="{status}"]')).to_be_visible()
    await expect(execute).to_contain_text("auth: tenant key")

    # A list operation's query parameters, with their limits.
    listing = page.locator('details.op[data-method="get"][data-path="/api/executions"]')
    await listing.locator(":scope > summary").click()
    await expect(listing.locator('tr[data-param="limit"]')).to_contain_text("≤")
    await expect(listing.locator('tr[data-param="status"]')).to_contain_text("query")

    # A workflow body's steps: one variant per installed action, each with its params.
    save = page.locator('details.op[data-method="post"][data-path="/api/workflows"]')
    await save.locator(":scope > summary").click()
    await expect(save.locator(".request-body")).to_contain_text("StepIn[http_request]")

    # The filter narrows the list; the WebSocket feed is documented too.
    await page.fill("#ref-search", "dlq")
    dlq = [op for op in operations if "dlq" in op[1]]
    await expect(page.locator("#ref-ops details.op:not([hidden])")).to_have_count(len(dlq))
    await page.fill("#ref-search", "")
    await expect(page.locator("#ref-websocket")).to_contain_text("/ws/events")
    await expect(page.locator("#ref-websocket")).to_contain_text("4429")

    assert await page.evaluate("document.documentElement.scrollWidth") <= 800
    outside = [u for u in requested if not u.startswith(deployment.base_url)]
    assert outside == [], outside
    assert watch.errors == [], watch.errors
    assert watch.bad == [], watch.bad
    await page.close()


async def test_reference_opens_on_a_linked_operation(deployment: Deployment, browser: Any) -> None:
    from playwright.async_api import expect

    page = await browser.new_page(viewport={"width": 800, "height": 900})
    watch = Watch(page)
    await page.goto(f"{deployment.base_url}/reference#get-api-dlq")
    target = page.locator("#get-api-dlq")
    await expect(target).to_have_attribute("open", "", timeout=TIMEOUT_MS)
    await expect(target.locator('tr[data-param="limit"]')).to_be_visible()
    assert watch.errors == [] and watch.bad == [], (watch.errors, watch.bad)
    await page.close()
