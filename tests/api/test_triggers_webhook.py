"""``POST /api/triggers/webhook/{token}``: firing, signatures (good, bad, stale, replayed), limits, refusals."""

from __future__ import annotations

import time
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from services.api.routes.webhooks import MAX_BODY_BYTES, sign
from shared.infra.clock import month_of, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import TriggerFired, decode
from tests.api.support import TenantHandle, create_workflow, execution_state, log_lengths

SECRET = "correct horse battery staple"


async def webhook(client: httpx.AsyncClient, tenant: TenantHandle, **config: Any) -> dict[str, Any]:
    wf = await create_workflow(client, tenant)
    r = await client.post("/api/triggers", headers=tenant.headers,
                          json={"workflow_id": wf["id"], "trigger_type": "webhook", "config": config})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def path_of(trigger: dict[str, Any]) -> str:
    return str(trigger["webhook_url"]).removeprefix("http://orq.test")


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    ts = int(time.time() if at is None else at)
    return {"X-Orq-Timestamp": str(ts), "X-Orq-Signature": sign(secret, ts, body), "Content-Type": "application/json"}


async def test_body_becomes_params_and_the_firing_is_recorded(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis
) -> None:
    trigger = await webhook(client, tenant, params={"source": "crm", "x": 0})
    r = await client.post(path_of(trigger), json={"invoice": 42, "x": 1})  # no API key: the token is enough
    assert r.status_code == 202, r.text
    execution_id = r.json()["execution_id"]
    assert set(r.json()) == {"execution_id"}
    state = await execution_state(redis, tenant, execution_id)
    assert state["status"] == "queued" and state["trigger_type"] == "webhook"
    params = await redis.hget(keys.execution(tenant.partition, execution_id), "params")
    assert msgspec.msgpack.decode(params) == {"source": "crm", "x": 1, "invoice": 42}
    fired = [decode(r.body) for r in records_of(await redis.xrange(keys.log(tenant.partition)))
             if r.type == "trigger.fired"]
    assert len(fired) == 1 and isinstance(fired[0], TriggerFired)
    assert fired[0].execution_id == execution_id and fired[0].trigger.trigger_count == 1
    trig = await redis.hgetall(keys.trigger(tenant.partition, trigger["id"]))
    assert trig[b"count"] == b"1" and trig[b"last_execution_id"] == execution_id.encode()
    r = await client.post(path_of(trigger))  # an empty body is no params
    assert r.status_code == 202


async def test_signatures_good_bad_stale_replayed(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    trigger = await webhook(client, tenant, secret=SECRET)
    path = path_of(trigger)
    body = b'{"order": 7}'
    good = signed(body)
    r = await client.post(path, content=body, headers=good)
    assert r.status_code == 202, r.text
    before = await log_lengths(redis, settings)
    cases = {
        "missing": {"Content-Type": "application/json"},
        "bad_signature": signed(body, secret="not the secret at all"),
        "stale": signed(body, at=time.time() - 301),
        "replayed": good,
    }
    for reason, headers in cases.items():
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 401, (reason, r.text)
        assert r.json()["error"]["reason"] == reason
    tampered = dict(signed(body))
    r = await client.post(path, content=b'{"order": 8}', headers=tampered)
    assert r.status_code == 401 and r.json()["error"]["reason"] == "bad_signature"
    assert await log_lengths(redis, settings) == before, "refused calls append nothing"
    future = signed(body, at=time.time() + 200)  # within 5 minutes either way
    assert (await client.post(path, content=body, headers=future)).status_code == 202


async def test_unknown_and_disabled_tokens_look_the_same(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    trigger = await webhook(client, tenant)
    r = await client.put(f"/api/triggers/{trigger['id']}", headers=tenant.headers, json={
        "workflow_id": trigger["workflow_id"], "trigger_type": "webhook", "enabled": False})
    assert r.status_code == 200
    disabled = await client.post(path_of(trigger), json={})
    unknown = await client.post("/api/triggers/webhook/" + "0" * 40, json={})
    garbage = await client.post("/api/triggers/webhook/..%2F..", json={})
    assert disabled.status_code == unknown.status_code == garbage.status_code == 404
    assert disabled.json() == unknown.json()
    r = await client.delete(f"/api/triggers/{trigger['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await client.post(path_of(trigger), json={})).json() == unknown.json()


async def test_bad_bodies(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    path = path_of(await webhook(client, tenant))
    r = await client.post(path, content=b"[1, 2]")
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = await client.post(path, content=b"{not json")
    assert r.status_code == 400
    r = await client.post(path, content=b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert r.status_code == 413


async def test_rate_limit_per_token(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    limited = await webhook(client, tenant, rate_per_minute=3)
    other = await webhook(client, tenant, rate_per_minute=3)
    if now_ms() % 60_000 > 55_000:  # stay within one window
        time.sleep(60 - (now_ms() % 60_000) / 1000 + 0.1)
    statuses = [(await client.post(path_of(limited), json={})).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    r = await client.post(path_of(limited), json={})
    assert 1 <= int(r.headers["Retry-After"]) <= 60 and r.json()["error"]["code"] == "rate_limited"
    assert (await client.post(path_of(other), json={})).status_code == 202


async def test_over_quota_is_a_429_and_nothing_is_queued(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    trigger = await webhook(client, tenant)
    quota = settings.plans["pro"].monthly_quota
    await redis.set(keys.usage(tenant.partition, tenant.id, month_of(now_ms())), quota)
    r = await client.post(path_of(trigger), json={})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert int(r.headers["Retry-After"]) > 0
    types = [rec.type for rec in records_of(await redis.xrange(keys.log(tenant.partition)))]
    assert "execution.queued" not in types and types[-2:] == ["trigger.skipped", "quota.exceeded"]
