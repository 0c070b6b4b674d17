"""A user's first hour (issue 16), the backend items: work-queue runs retried by their queue only, a retried
queue-item run taking its item back, the executions of an item, ``?trigger_type=`` and the API index.

Real app, executor, projector and trigger service in this process, on the test Redis and SQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
from redis.asyncio import Redis

from services.trigger.service import serve as serve_trigger
from shared.domain.queues.claims import abandon_due
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from tests.api.support import TenantHandle, create_workflow, execute, executor, get_execution, projector
from tests.helpers import assert_eventually, http_server

RUN_TIMEOUT_S = 30


@asynccontextmanager
async def trigger_service(settings: Settings) -> AsyncIterator[None]:
    """``orq trigger``'s own start-up, in the background (no SMTP listener: the port may be anyone's)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve_trigger(replace(settings, smtp_port=0), stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[None]:
    async with projector(settings), executor(settings), trigger_service(settings):
        yield


@contextmanager
def flaky_server(failures: int) -> Iterator[str]:
    """A loopback HTTP endpoint answering 500 to its first ``failures`` requests, then 200; its URL."""
    calls = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            calls["n"] += 1
            status = 500 if calls["n"] <= failures else 200
            body = b'{"ok": true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as port:
        yield f"http://127.0.0.1:{port}/invoice"


async def queue_with_trigger(client: httpx.AsyncClient, tenant: TenantHandle, workflow: dict[str, Any],
                             max_retries: int) -> str:
    r = await client.post("/api/queues", json={"name": "invoices", "max_retries": max_retries},
                          headers=tenant.headers)
    assert r.status_code == 201, r.text
    queue_id: str = r.json()["id"]
    r = await client.post("/api/triggers", json={"workflow_id": workflow["id"], "trigger_type": "queue_item",
                                                 "config": {"queue_id": queue_id}}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return queue_id


async def add_item(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, **data: Any) -> str:
    r = await client.post(f"/api/queues/{queue_id}/items", json={"data": {"invoice": 7, **data}},
                          headers=tenant.headers)
    assert r.status_code == 201, r.text
    item_id: str = r.json()["id"]
    return item_id


async def items_of(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str) -> dict[str, dict[str, Any]]:
    r = await client.get(f"/api/queues/{queue_id}/items", params={"limit": 50}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return {i["id"]: i for i in r.json()["items"]}


async def item_detail(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, item_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/queues/{queue_id}/items/{item_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    detail: dict[str, Any] = r.json()
    return detail


async def test_a_queue_item_run_has_one_attempt_and_the_queue_retries_the_item(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    # The workflow's own policy would retry (and succeed on attempt 2); a queue item's run gets one attempt.
    workflow = await create_workflow(client, tenant, {
        "name": "process invoice",
        "retry": {"attempts": 3, "backoff": {"type": "fixed", "delay_ms": 50}},
        "steps": [{"action": "fail", "params": {"message": "SAP down", "until_attempt": 2}}],
    })
    queue_id = await queue_with_trigger(client, tenant, workflow, max_retries=1)
    async with services(settings):
        first = await add_item(client, tenant, queue_id)

        async def both_ended() -> dict[str, dict[str, Any]]:
            items = await items_of(client, tenant, queue_id)
            assert sorted(i["status"] for i in items.values()) == ["failed", "retried"], items
            return items

        items = await assert_eventually(both_ended, timeout=RUN_TIMEOUT_S, interval=0.2,
                                        message="the item failed once, was retried once, and its retry failed")
        retry = items[first]["retry_id"]
        assert items[retry]["retry_of"] == first and items[retry]["error"]["kind"] == "application"
        runs = [items[first]["execution_id"], items[retry]["execution_id"]]
        assert all(runs) and runs[0] != runs[1]
        for run in runs:
            assert await redis.hget(keys.execution(tenant.partition, run), "max_attempts") == b"1"

        async def one_attempt_each_and_no_dlq() -> None:
            for run in runs:
                body = await get_execution(client, tenant, run)
                assert (body["status"], body["retry_count"]) == ("failed", 0), body
            r = await client.get("/api/dlq", headers=tenant.headers)  # taken out by the queue, which retried
            assert r.status_code == 200 and r.json()["items"] == [], r.text

        await assert_eventually(one_attempt_each_and_no_dlq, timeout=RUN_TIMEOUT_S, interval=0.2)


async def test_a_retried_queue_item_run_takes_its_item_back(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings
) -> None:
    settings = replace(settings, allow_private_networks=True)
    with flaky_server(failures=1) as url:
        workflow = await create_workflow(client, tenant, {
            "name": "post invoice", "retry": {"attempts": 1},
            # The address comes with the item: the API checks a literal URL when the workflow is saved.
            "steps": [{"action": "http_request", "params": {"method": "GET", "url": "{{ params.url }}"}}],
        })
        queue_id = await queue_with_trigger(client, tenant, workflow, max_retries=0)
        async with services(settings):
            item_id = await add_item(client, tenant, queue_id, url=url)

            async def failed() -> dict[str, Any]:
                item = await item_detail(client, tenant, queue_id, item_id)
                assert item["status"] == "failed", item
                return item

            item = await assert_eventually(failed, timeout=RUN_TIMEOUT_S, interval=0.2, message="the item failed")
            run = item["execution_id"]
            assert item["executions"] == [run]
            assert (await get_execution(client, tenant, run))["status"] == "failed"

            r = await client.post(f"/api/executions/{run}/retry", headers=tenant.headers)
            assert r.status_code == 202, r.text

            async def completed() -> dict[str, Any]:
                item = await item_detail(client, tenant, queue_id, item_id)
                assert item["status"] == "completed", item
                return item

            item = await assert_eventually(completed, timeout=RUN_TIMEOUT_S, interval=0.2,
                                           message="the item followed its run's retry")
    assert [(h["event"], h["status"]) for h in item["history"]] == [
        ("queue_item.added", "new"),
        ("queue_item.started", "in_progress"),
        ("queue_item.failed", "failed"),
        ("queue_item.started", "in_progress"),
        ("queue_item.completed", "completed"),
    ]
    assert [h["execution_id"] for h in item["history"]] == [None, run, run, run, run]
    assert item["executions"] == [run] and item["execution_id"] == run and item["error"] is None
    assert (await get_execution(client, tenant, run))["status"] == "completed"
    assert len(await items_of(client, tenant, queue_id)) == 1  # the queue added no retry of its own


async def test_a_retried_run_of_an_item_the_queue_retried_is_not_retried_twice(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings
) -> None:
    workflow = await create_workflow(client, tenant, {
        "name": "always fails", "retry": {"attempts": 1},
        "steps": [{"action": "fail", "params": {"message": "boom"}}],
    })
    queue_id = await queue_with_trigger(client, tenant, workflow, max_retries=1)
    async with services(settings):
        first = await add_item(client, tenant, queue_id)

        async def ended(expected: list[str]) -> dict[str, dict[str, Any]]:
            items = await items_of(client, tenant, queue_id)
            assert sorted(i["status"] for i in items.values()) == expected, items
            return items

        items = await assert_eventually(lambda: ended(["failed", "retried"]), timeout=RUN_TIMEOUT_S, interval=0.2)
        run = items[first]["execution_id"]
        r = await client.post(f"/api/executions/{run}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text

        async def first_failed_again() -> None:
            item = await item_detail(client, tenant, queue_id, first)
            assert [h["event"] for h in item["history"]][-2:] == ["queue_item.started", "queue_item.failed"], item
            assert item["status"] == "failed" and item["executions"] == [run]

        await assert_eventually(first_failed_again, timeout=RUN_TIMEOUT_S, interval=0.2)
        # It has its retry already: no second one.
        items = await ended(["failed", "failed"])
        assert items[first]["retry_id"] in items


async def test_a_dlq_retry_of_a_run_whose_item_was_abandoned_takes_the_item_back(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, committer: Committer, settings: Settings
) -> None:
    workflow = await create_workflow(client, tenant, {
        "name": "slow and failing", "retry": {"attempts": 1},
        "steps": [{"action": "delay", "params": {"ms": 1500}}, {"action": "fail", "params": {"message": "boom"}}],
    })
    queue_id = await queue_with_trigger(client, tenant, workflow, max_retries=1)
    async with services(settings):
        first = await add_item(client, tenant, queue_id)

        async def in_progress() -> str:
            item = await item_detail(client, tenant, queue_id, first)
            assert item["status"] == "in_progress" and item["execution_id"], item
            return str(item["execution_id"])

        run = await assert_eventually(in_progress, timeout=RUN_TIMEOUT_S, interval=0.05)
        # The sweep, as it would run a day later: the item is abandoned (and retried) while its run still runs.
        assert await abandon_due(redis, committer, tenant.partition, now_ms() + 24 * 3600 * 1000) == 1

        async def run_dead_lettered() -> None:
            r = await client.get("/api/dlq", headers=tenant.headers)
            assert r.status_code == 200 and run in [e["id"] for e in r.json()["items"]], r.text

        await assert_eventually(run_dead_lettered, timeout=RUN_TIMEOUT_S, interval=0.2)
        r = await client.post(f"/api/dlq/{run}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text

        async def failed_again_and_out_of_the_dlq() -> dict[str, Any]:
            item = await item_detail(client, tenant, queue_id, first)
            assert [h["event"] for h in item["history"]][-2:] == ["queue_item.started", "queue_item.failed"], item
            r = await client.get("/api/dlq", headers=tenant.headers)
            assert run not in [e["id"] for e in r.json()["items"]], r.text
            return item

        item = await assert_eventually(failed_again_and_out_of_the_dlq, timeout=RUN_TIMEOUT_S, interval=0.2)
    assert [h["event"] for h in item["history"]] == [
        "queue_item.added", "queue_item.started", "queue_item.abandoned", "queue_item.retried",
        "queue_item.started", "queue_item.failed",
    ]
    assert item["status"] == "failed" and item["executions"] == [run] and item["retry_id"]


async def test_executions_filtered_by_trigger_type(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings
) -> None:
    workflow = await create_workflow(client, tenant)
    manual = [await execute(client, tenant, workflow["id"], trigger_type="manual") for _ in range(3)]
    by_api = await execute(client, tenant, workflow["id"])

    async def listed(**query: Any) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            params = {**query, "limit": 2, **({"cursor": cursor} if cursor else {})}
            r = await client.get("/api/executions", params=params, headers=tenant.headers)
            assert r.status_code == 200, r.text
            ids += [e["id"] for e in r.json()["items"]]
            assert all(e["trigger_type"] == query.get("trigger_type", e["trigger_type"]) for e in r.json()["items"])
            if (cursor := r.json()["next_cursor"]) is None:
                return ids

    async with projector(settings):
        async def projected() -> None:
            assert sorted(await listed()) == sorted([*manual, by_api])

        await assert_eventually(projected, timeout=RUN_TIMEOUT_S, interval=0.1)
    assert sorted(await listed(trigger_type="manual")) == sorted(manual)  # across pages of 2
    assert await listed(trigger_type="api", workflow_id=workflow["id"], status="queued") == [by_api]
    assert await listed(trigger_type="schedule") == []
    assert await listed(trigger_type="manual", status="completed") == []
    r = await client.get("/api/executions", params={"trigger_type": "cron"}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "trigger_type", r.text


async def test_the_api_index_is_documented_and_links_the_reference(client: httpx.AsyncClient) -> None:
    r = await client.get("/api")
    assert r.status_code == 200, r.text
    index = r.json()
    assert index["reference"] == "/reference" and index["openapi"] == "/openapi.json"
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    operation = r.json()["paths"]["/api"]["get"]
    assert operation["security"] == [] and "200" in operation["responses"]
    executions = r.json()["paths"]["/api/executions"]["get"]
    assert "trigger_type" in {p["name"] for p in executions["parameters"]}
