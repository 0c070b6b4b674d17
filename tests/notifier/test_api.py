"""``notify`` on workflows is validated before anything is saved; the notification routes' refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.support import TenantHandle

STEPS = [{"action": "noop"}]


@pytest.mark.parametrize(("notify", "field"), [
    ([{"on": ["completed"], "webhook": "https://a.example.com/h", "email": "a@example.com"}], "notify[0]"),
    ([{"on": ["completed"]}], "notify[0]"),
    ([{"on": ["completed"], "webhook": "ftp://a.example.com/h"}], "notify[0].webhook"),
    ([{"on": ["completed"], "webhook": "https://u:p@a.example.com/h"}], "notify[0].webhook"),
    ([{"on": ["completed"], "email": "a@example.com", "secret": "long-enough-secret"}], "notify[0].secret"),
    ([{"on": ["completed"], "email": "not-an-address"}], "notify[0].email"),
    ([{"on": [], "email": "a@example.com"}], "notify[0].on"),
    ([{"on": ["started"], "email": "a@example.com"}], "notify[0].on[0]"),
    ([{"on": ["failed"], "webhook": "https://a.example.com/h", "secret": "short"}], "notify[0].secret"),
])
async def test_bad_notify_entries_are_422(client: httpx.AsyncClient, tenant: TenantHandle, notify: Any,
                                          field: str) -> None:
    r = await client.post("/api/workflows", json={"name": "w", "steps": STEPS, "notify": notify},
                          headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith(field)


async def test_valid_notify_entries_are_saved(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    notify = [{"on": ["failed", "dead_lettered"], "webhook": "https://hooks.example.com/orq", "secret": "0123456789"},
              {"on": ["completed"], "email": "ops@example.com"}]
    r = await client.post("/api/workflows", json={"name": "w", "steps": STEPS, "notify": notify},
                          headers=tenant.headers)
    assert r.status_code == 201, r.text


async def test_notification_routes_refuse_bad_requests(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    listed = await client.get("/api/notifications", headers=tenant.headers)
    assert listed.status_code == 200 and listed.json() == {"items": [], "next_cursor": None}
    bad = await client.get("/api/notifications", params={"status": "lost"}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
    missing = await client.post("/api/notifications/" + "f" * 32 + "/resend", headers=tenant.headers)
    assert missing.status_code == 404
    anonymous = await client.get("/api/notifications")
    assert anonymous.status_code == 401
