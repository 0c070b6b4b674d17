"""Webhook rate limits (issue 12 item 7): only validly signed calls spend a signed webhook's budget; refused
calls (no or a bad signature, a replay) have their own, tighter budget, so they cannot lock the sender out."""

from __future__ import annotations

import time
from typing import Any

import httpx

from services.api.routes.webhooks import sign
from shared.infra.clock import now_ms
from shared.infra.settings import load_settings
from tests.api.support import TenantHandle, create_workflow
from tests.hardening.conftest import Api

SECRET = "the sender's secret"


async def _signed_webhook(client: httpx.AsyncClient, tenant: TenantHandle, rate: int) -> str:
    wf = await create_workflow(client, tenant)
    r = await client.post("/api/triggers", headers=tenant.headers, json={
        "workflow_id": wf["id"], "trigger_type": "webhook", "config": {"secret": SECRET, "rate_per_minute": rate}})
    assert r.status_code == 201, r.text
    return str(r.json()["webhook_url"]).removeprefix("http://orq.test")


def _signed(body: bytes) -> dict[str, str]:
    ts = int(time.time())
    return {"X-Orq-Timestamp": str(ts), "X-Orq-Signature": sign(SECRET, ts, body)}


def _same_minute() -> None:
    if now_ms() % 60_000 > 50_000:  # every call of a test in one rate window
        time.sleep(60 - (now_ms() % 60_000) / 1000 + 0.1)


async def test_unsigned_calls_do_not_spend_the_senders_budget(api: Api, tenant: TenantHandle) -> None:
    client, _ = api
    path = await _signed_webhook(client, tenant, rate=3)
    _same_minute()
    for _ in range(5):
        r = await client.post(path, json={"anonymous": True})
        assert r.status_code == 401, r.text
    forged = await client.post(path, content=b"{}", headers={**_signed(b"{}"), "X-Orq-Signature": "sha256=00"})
    assert forged.status_code == 401
    statuses = []
    for n in range(4):
        body = f'{{"n": {n}}}'.encode()
        statuses.append((await client.post(path, content=body, headers=_signed(body))).status_code)
    assert statuses == [202, 202, 202, 429], "the sender's own budget, untouched by the refused calls"


async def test_refused_calls_have_their_own_tighter_budget(make_api: Any, tenant: TenantHandle) -> None:
    client, settings = await make_api(hook_refused_per_minute=2)
    path = await _signed_webhook(client, tenant, rate=50)
    _same_minute()
    statuses = [(await client.post(path, json={})).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]
    refused = await client.post(path, json={})
    assert refused.json()["error"]["code"] == "rate_limited" and 1 <= int(refused.headers["Retry-After"]) <= 60
    body = b'{"real": 1}'
    headers = _signed(body)
    assert (await client.post(path, content=body, headers=headers)).status_code == 202
    replayed = await client.post(path, content=body, headers=headers)  # a replay is a refused call too
    assert replayed.status_code == 429, replayed.text
    other = b'{"real": 2}'
    assert (await client.post(path, content=other, headers=_signed(other))).status_code == 202


def test_the_refused_budget_setting() -> None:
    assert load_settings({}).hook_refused_per_minute == 10
    assert load_settings({"ORQ_HOOK_REFUSED_PER_MINUTE": "3"}).hook_refused_per_minute == 3
