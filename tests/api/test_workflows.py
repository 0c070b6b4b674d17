"""Workflows: each save is a new immutable version (event + state + definition in one unit); bad input is
refused before anything is written."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.domain.aggregates import decode_definition, read_workflow
from shared.infra.settings import Settings
from shared.log import keys
from tests.api.support import NOOP_WORKFLOW, TenantHandle, create_workflow, log_lengths, log_types, projector
from tests.helpers import assert_eventually

FULL: dict[str, Any] = {
    "name": "invoices",
    "description": "fetch and log",
    "steps": [
        {"action": "set", "label": "seed", "params": {"values": {"n": "{{ params.n }}"}}},
        {"action": "http_request", "params": {"url": "http://example.invalid", "timeout_s": 2}, "timeout_s": 5},
        {"action": "log", "params": {"message": "got {{ steps.1.output.status }}"}, "on_error": "continue"},
        {"action": "delay", "params": {"ms": "{{ params.wait }}"}},
    ],
    "retry": {"attempts": 5, "backoff": {"type": "fixed", "delay_ms": 100}},
    "retry_from": "start",
}


async def test_create_saves_version_one(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    body = await create_workflow(client, tenant, FULL)

    assert body["version"] == 1 and body["name"] == "invoices" and body["retry_from"] == "start"
    assert body["retry"] == {"attempts": 5, "backoff": {"type": "fixed", "delay_ms": 100}}
    assert body["steps"][0] == {
        "action": "set",
        "label": "seed",
        "params": {"values": {"n": "{{ params.n }}"}},
        "timeout_s": None,
        "on_error": "fail",
        "runs_on": None,
    }
    assert body["created_at"].endswith("Z") and body["created_at"] == body["updated_at"]
    p = tenant.partition
    state = await read_workflow(redis, p, body["id"])
    assert state is not None and state.tenant_id == tenant.id and state.version == 1 and not state.deleted
    definition = decode_definition(await redis.get(keys.workflow_version(p, body["id"], 1)))
    assert definition.name == "invoices" and len(definition.steps) == 4 and definition.retry.attempts == 5
    assert (await log_types(redis, p))[-1] == "workflow.saved"


async def test_defaults_are_filled_in(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    body = await create_workflow(client, tenant, NOOP_WORKFLOW)
    assert body["retry"] == {"attempts": 3, "backoff": {"type": "exponential", "delay_ms": 5000}}
    assert body["retry_from"] == "failed_step" and body["description"] is None


async def test_put_makes_a_new_version_and_keeps_the_old(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.put(f"/api/workflows/{wf['id']}", json=FULL, headers=tenant.headers)

    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["name"] == "invoices"
    assert r.json()["created_at"] == wf["created_at"]
    p = tenant.partition
    assert decode_definition(await redis.get(keys.workflow_version(p, wf["id"], 1))).name == "hello"
    assert decode_definition(await redis.get(keys.workflow_version(p, wf["id"], 2))).name == "invoices"


async def test_delete_marks_deleted(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.delete(f"/api/workflows/{wf['id']}", headers=tenant.headers)

    assert r.status_code == 204
    state = await read_workflow(redis, tenant.partition, wf["id"])
    assert state is not None and state.deleted
    assert (await log_types(redis, tenant.partition))[-1] == "workflow.deleted"
    for method in ("DELETE", "PUT"):
        r = await client.request(method, f"/api/workflows/{wf['id']}", json=NOOP_WORKFLOW, headers=tenant.headers)
        assert r.status_code == 404
    r = await client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)
    assert r.status_code == 404


async def test_reads_come_from_the_projection(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    first = await create_workflow(client, tenant, {**NOOP_WORKFLOW, "name": "first"})
    await asyncio.sleep(0.002)  # newest first is by creation time; within one millisecond, by id
    second = await create_workflow(client, tenant, FULL)
    gone = await create_workflow(client, tenant, {**NOOP_WORKFLOW, "name": "gone"})
    await client.delete(f"/api/workflows/{gone['id']}", headers=tenant.headers)
    theirs = await create_workflow(client, other_tenant)

    async with projector(settings):

        async def listed() -> list[str]:
            r = await client.get("/api/workflows", headers=tenant.headers)
            assert r.status_code == 200
            ids = [w["id"] for w in r.json()["items"]]
            assert set(ids) == {first["id"], second["id"]}
            return ids

        ids = await assert_eventually(listed, timeout=20, message="workflows projected")

    assert ids[0] == second["id"]  # newest first
    r = await client.get(f"/api/workflows/{second['id']}", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json() == second
    for wid in (gone["id"], theirs["id"], "nope"):
        r = await client.get(f"/api/workflows/{wid}", headers=tenant.headers)
        assert r.status_code == 404, wid
        assert r.json()["error"]["code"] == "not_found"
    r = await client.get("/api/workflows", params={"limit": 1}, headers=tenant.headers)
    page1 = r.json()
    assert [w["id"] for w in page1["items"]] == [second["id"]] and page1["next_cursor"]
    r = await client.get("/api/workflows", params={"limit": 1, "cursor": page1["next_cursor"]}, headers=tenant.headers)
    assert [w["id"] for w in r.json()["items"]] == [first["id"]] and r.json()["next_cursor"] is None


async def test_another_tenants_workflow_is_404(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    theirs = await create_workflow(client, other_tenant)
    before = await log_lengths(redis, settings)
    for method, suffix in (("PUT", ""), ("DELETE", ""), ("POST", "/execute"), ("GET", "")):
        r = await client.request(
            method, f"/api/workflows/{theirs['id']}{suffix}", json=NOOP_WORKFLOW, headers=tenant.headers
        )
        assert r.status_code == 404, method
    r = await client.post(f"/api/workflows/{theirs['id']}/execute/bulk", json={"runs": [{}]}, headers=tenant.headers)
    assert r.status_code == 404
    assert await log_lengths(redis, settings) == before


def _with_step(**step: Any) -> dict[str, Any]:
    return {"name": "x", "steps": [step]}


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"steps": [{"action": "noop"}]}, "name"),
    ({"name": "x"}, "steps"),
    ({"name": "x", "steps": []}, "steps"),
    ({"name": "x", "steps": [{"action": "noop"}] * 201}, "steps"),
    ({"name": 3, "steps": [{"action": "noop"}]}, "name"),
    ({"name": "x", "steps": {"action": "noop"}}, "steps"),
    ({"name": "x", "steps": [{"action": "noop"}], "colour": "red"}, "colour"),
    (_with_step(action="teleport"), "steps[0].action"),
    (_with_step(), "steps[0].action"),
    (_with_step(action="noop", extra=1), "steps[0].extra"),
    (_with_step(action="noop", timeout_s=0), "steps[0].timeout_s"),
    (_with_step(action="noop", timeout_s=-1), "steps[0].timeout_s"),
    (_with_step(action="noop", timeout_s="5"), "steps[0].timeout_s"),
    (_with_step(action="noop", on_error="ignore"), "steps[0].on_error"),
    (_with_step(action="noop", params=[1]), "steps[0].params"),
    (_with_step(action="delay", params={"ms": "soon"}), "steps[0].params.ms"),
    (_with_step(action="delay", params={"ms": -5}), "steps[0].params.ms"),
    (_with_step(action="log", params={}), "steps[0].params.message"),
    (_with_step(action="log", params={"message": 1}), "steps[0].params.message"),
    (_with_step(action="http_request", params={"url": "http://x", "method": "FETCH"}), "steps[0].params.method"),
    (_with_step(action="noop", params={"x": 1}), "steps[0].params.x"),
    (_with_step(action="log", params={"message": "{{ steps.0.output.x }}"}), "steps[0].params"),
    (_with_step(action="log", params={"message": "{{ env.HOME }}"}), "steps[0].params"),
    (_with_step(action="set", params={"values": {"big": 2**70}}), "steps[0].params.values.big"),
    ({"name": "x", "steps": [{"action": "noop"}], "retry": {"attempts": 0}}, "retry.attempts"),
    ({"name": "x", "steps": [{"action": "noop"}], "retry": {"attempts": 101}}, "retry.attempts"),
    ({"name": "x", "steps": [{"action": "noop"}], "retry": {"backoff": {"delay_ms": -1}}}, "retry.backoff.delay_ms"),
    ({"name": "x", "steps": [{"action": "noop"}], "retry": {"backoff": {"type": "linear"}}}, "retry.backoff.type"),
    ({"name": "x", "steps": [{"action": "noop"}], "retry_from": "middle"}, "retry_from"),
]


@pytest.mark.parametrize(("body", "field"), INVALID, ids=[f for _, f in INVALID])
async def test_invalid_workflow_is_422_naming_the_field(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, body: dict[str, Any], field: str
) -> None:
    wf = await create_workflow(client, tenant)
    before = await log_lengths(redis, settings)

    for method, path in (("POST", "/api/workflows"), ("PUT", f"/api/workflows/{wf['id']}")):
        r = await client.request(method, path, json=body, headers=tenant.headers)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_failed"
        assert error["field"] == field, error
        assert error["message"]
    assert await log_lengths(redis, settings) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"",
        b"not json",
        b'{"name": "x",}',
        b'{"name": "\xff"}',
        b'{"name": "x", "steps": [{"action": "set", "params": {"values": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}]}",
    ],
    ids=["truncated", "empty", "text", "trailing-comma", "bad-utf8", "deep"],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, raw: bytes
) -> None:
    before = await log_lengths(redis, settings)
    r = await client.post("/api/workflows", content=raw, headers={**tenant.headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"
    assert await log_lengths(redis, settings) == before


async def test_json_of_the_wrong_shape_is_422(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    for raw in (b"[]", b"1", b"null", b'"x"'):
        r = await client.post("/api/workflows", content=raw, headers=tenant.headers)
        assert r.status_code == 422, raw


async def test_deep_params_are_refused(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    r = await client.post(
        "/api/workflows", json=_with_step(action="set", params={"values": deep}), headers=tenant.headers
    )
    assert r.status_code == 422


async def test_notify_entries_are_shown_with_their_secret_masked(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle
) -> None:
    body = {**NOOP_WORKFLOW, "notify": [
        {"on": ["failed"], "webhook": "https://hooks.example.com/x", "secret": "s3cr3t-value"},
        {"on": ["completed"], "email": "ops@example.com"},
    ]}
    created = await create_workflow(client, tenant, body)
    async with projector(settings):

        async def shown() -> dict[str, Any]:
            r = await client.get(f"/api/workflows/{created['id']}", headers=tenant.headers)
            assert r.status_code == 200
            result: dict[str, Any] = r.json()
            return result

        read = await assert_eventually(shown, timeout=10, message="projected")
    for reply in (created, read):
        assert reply["notify"][0]["webhook"] == "https://hooks.example.com/x"
        assert reply["notify"][0]["secret"] == "********"
        assert reply["notify"][1] == {"on": ["completed"], "webhook": None, "secret": None, "email": "ops@example.com"}
