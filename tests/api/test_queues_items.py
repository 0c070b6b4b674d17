"""Queue items over HTTP: adding (one, bulk, all or nothing), unique references, claim order, concurrent
claimers, deferral, and finishing (completed, business and application failures with retry chains)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import Settings
from shared.log import keys
from shared.log.redis import text
from tests.api.support import TenantHandle, log_lengths, log_types
from tests.api.test_queues import make_queue
from tests.helpers import assert_eventually


def at(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


async def add(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/queues/{queue_id}/items", json={"data": {}, **body}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    item: dict[str, Any] = r.json()
    return item


async def claim(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, **body: Any) -> dict[str, Any] | None:
    r = await client.post(f"/api/queues/{queue_id}/items/next", json=body or None, headers=tenant.headers)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


async def finish(client: httpx.AsyncClient, tenant: TenantHandle, queue_id: str, item_id: str,
                 **body: Any) -> httpx.Response:
    return await client.put(f"/api/queues/{queue_id}/items/{item_id}", json=body, headers=tenant.headers)


async def test_add_one_item(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    deadline = "2030-01-02T03:04:05.678+01:00"

    item = await add(client, tenant, q["id"], data={"invoice": 42, "lines": [1, 2]}, priority=2, reference="INV-42",
                     deadline=deadline)

    assert item["status"] == "new" and item["queue_id"] == q["id"] and len(item["id"]) == 32
    assert item["data"] == {"invoice": 42, "lines": [1, 2]}
    assert (item["priority"], item["reference"], item["retry_count"]) == (2, "INV-42", 0)
    assert item["deadline"] == "2030-01-02T02:04:05.678Z"
    assert item["started_at"] is None and item["processed_by"] is None
    assert (await log_types(redis, tenant.partition))[-1] == "queue_item.added"


async def test_bulk_adds_all_and_names_them(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)

    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json={"items": [{"data": {"n": n}} for n in range(50)]},
                          headers=tenant.headers)

    assert r.status_code == 201, r.text
    body = r.json()
    assert body["count"] == 50 and len(set(body["ids"])) == 50
    assert await redis.zcard(keys.queue_ready(tenant.partition, q["id"])) == 50
    first = await claim(client, tenant, q["id"])
    assert first is not None and first["id"] == body["ids"][0] and first["data"] == {"n": 0}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"data": {}, "priority": 11}, "items[37].priority"),
        ({"data": {}, "priority": 0}, "items[37].priority"),
        ({"data": "not an object"}, "items[37].data"),
        ({"priority": 1}, "items[37].data"),
        ({"data": {}, "deadline": "tomorrow"}, "items[37].deadline"),
        ({"data": {}, "deadline": "2030-01-01T00:00:00"}, "items[37].deadline"),
        ({"data": {}, "defer_until": "1900-01-01T00:00:00Z"}, "items[37].defer_until"),
        ({"data": {}, "reference": ""}, "items[37].reference"),
        ({"data": {"big": 2**70}}, "items[37].data.big"),
        ({"data": {}, "robot": "r2"}, "items[37].robot"),
    ],
)
async def test_one_bad_item_refuses_the_whole_bulk_naming_its_index(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, bad: dict[str, Any],
    field: str,
) -> None:
    q = await make_queue(client, tenant)
    items: list[dict[str, Any]] = [{"data": {"n": n}} for n in range(60)]
    items[37] = bad
    before = await log_lengths(redis, settings)

    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json={"items": items}, headers=tenant.headers)

    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and error["index"] == 37 and "items[37]" in error["message"]
    assert await log_lengths(redis, settings) == before
    assert await claim(client, tenant, q["id"]) is None


async def test_bulk_of_ten_thousand_in_one_call(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    items = [{"data": {"n": n}, "reference": f"R{n}"} for n in range(10_000)]

    started = time.perf_counter()
    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json={"items": items}, headers=tenant.headers)
    elapsed = time.perf_counter() - started

    assert r.status_code == 201, r.text
    assert r.json()["count"] == 10_000 and len(set(r.json()["ids"])) == 10_000
    assert await redis.zcard(keys.queue_ready(tenant.partition, q["id"])) == 10_000
    assert elapsed < 10, f"bulk of 10,000 took {elapsed:.1f}s"
    too_many: dict[str, Any] = {"items": [{"data": {}}] * 10_001}
    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json=too_many, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "items"


async def test_unique_reference_refuses_duplicates_even_of_completed_items(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant, unique_reference=True)
    first = await add(client, tenant, q["id"], reference="INV-1")
    await claim(client, tenant, q["id"])
    assert (await finish(client, tenant, q["id"], first["id"], status="completed")).status_code == 200
    before = await log_lengths(redis, settings)

    r = await client.post(f"/api/queues/{q['id']}/items", json={"data": {}, "reference": "INV-1"},
                          headers=tenant.headers)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["reference"] == "INV-1" and first["id"] in r.json()["error"]["message"]

    bulk = {"items": [{"data": {}, "reference": "INV-2"}, {"data": {}, "reference": "INV-1"}]}
    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json=bulk, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["error"]["index"] == 1

    bulk = {"items": [{"data": {}, "reference": "INV-3"}, {"data": {}}, {"data": {}, "reference": "INV-3"}]}
    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json=bulk, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["error"]["index"] == 2
    assert await log_lengths(redis, settings) == before

    assert (await add(client, tenant, q["id"], reference="INV-2"))["reference"] == "INV-2"


async def test_references_may_repeat_without_unique_reference(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    await add(client, tenant, q["id"], reference="same")
    await add(client, tenant, q["id"], reference="same")


async def test_claim_order_is_deadline_then_priority_then_age(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    early, late = at(3600), at(7200)
    plain_old = await add(client, tenant, q["id"], priority=5)
    urgent = await add(client, tenant, q["id"], priority=1)
    late_deadline = await add(client, tenant, q["id"], priority=9, deadline=late)
    early_deadline = await add(client, tenant, q["id"], priority=9, deadline=early)
    plain_new = await add(client, tenant, q["id"], priority=5)
    same_deadline_higher = await add(client, tenant, q["id"], priority=3, deadline=late)

    order = [(await claim(client, tenant, q["id"]) or {}).get("id") for _ in range(7)]

    assert order == [early_deadline["id"], same_deadline_higher["id"], late_deadline["id"], urgent["id"],
                     plain_old["id"], plain_new["id"], None]


async def test_deferred_items_wait_until_due(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    deferred = await add(client, tenant, q["id"], priority=1, defer_until=at(0.5))
    ready = await add(client, tenant, q["id"], priority=9, defer_until=at(-60))

    assert (await claim(client, tenant, q["id"]) or {}).get("id") == ready["id"]
    assert await claim(client, tenant, q["id"]) is None

    async def due() -> dict[str, Any]:
        item = await claim(client, tenant, q["id"])
        assert item is not None
        return item

    item = await assert_eventually(due, timeout=5, message="deferred item claimable")
    assert item["id"] == deferred["id"] and item["defer_until"] is not None


async def test_twenty_concurrent_claimers_for_ten_items(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    r = await client.post(f"/api/queues/{q['id']}/items/bulk", json={"items": [{"data": {"n": n}} for n in range(10)]},
                          headers=tenant.headers)
    ids = set(r.json()["ids"])

    replies = await asyncio.gather(*(client.post(f"/api/queues/{q['id']}/items/next", json={"robot": f"r{n}"},
                                                 headers=tenant.headers) for n in range(20)))

    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 10 + [204] * 10
    claimed = [r.json() for r in replies if r.status_code == 200]
    assert {c["id"] for c in claimed} == ids and len(claimed) == 10
    assert all(c["status"] == "in_progress" and c["processed_by"].startswith("r") for c in claimed)


async def test_processed_by_is_the_robot_or_the_callers_key(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    await add(client, tenant, q["id"])
    await add(client, tenant, q["id"])
    key_id = text(await redis.hget(keys.tenant(tenant.partition, tenant.id), "key_id"))

    by_robot = await claim(client, tenant, q["id"], robot="robot-7")
    by_key = await claim(client, tenant, q["id"])

    assert by_robot is not None and by_robot["processed_by"] == "robot-7"
    assert by_key is not None and by_key["processed_by"] == key_id and len(key_id) == 32
    assert by_key["started_at"] is not None


async def test_complete_then_nothing_more(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    item = await add(client, tenant, q["id"], data={"x": 1})
    await claim(client, tenant, q["id"])

    r = await finish(client, tenant, q["id"], item["id"], status="in_progress", progress="half way")
    assert r.status_code == 200 and r.json()["progress"] == "half way" and r.json()["status"] == "in_progress"
    r = await finish(client, tenant, q["id"], item["id"], status="completed", result={"paid": True})

    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "completed" and done["result"] == {"paid": True} and done["data"] == {"x": 1}
    assert done["finished_at"] is not None and done["processing_ms"] >= 0
    before = await log_lengths(redis, settings)
    for body in ({"status": "completed"}, {"status": "failed"}, {"status": "in_progress", "progress": "x"}):
        r = await finish(client, tenant, q["id"], item["id"], **body)
        assert r.status_code == 409 and r.json()["error"]["status"] == "completed"
    assert await log_lengths(redis, settings) == before


async def test_an_item_not_claimed_cannot_be_finished(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant)
    item = await add(client, tenant, q["id"])
    r = await finish(client, tenant, q["id"], item["id"], status="completed")
    assert r.status_code == 409 and r.json()["error"]["status"] == "new"


async def test_business_failure_is_final(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant, max_retries=3)
    item = await add(client, tenant, q["id"], reference="INV-9")
    await claim(client, tenant, q["id"])

    r = await finish(client, tenant, q["id"], item["id"], status="failed",
                     error={"message": "invoice already paid", "kind": "business"})

    assert r.status_code == 200, r.text
    failed = r.json()
    assert failed["status"] == "failed" and failed["retry_id"] is None
    assert failed["error"] == {"message": "invoice already paid", "kind": "business"}
    assert await claim(client, tenant, q["id"]) is None


async def test_application_failures_retry_until_max_retries(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant, max_retries=2)
    original = await add(client, tenant, q["id"], data={"invoice": 7}, reference="INV-7", priority=4)
    chain = [original["id"]]
    for attempt in range(3):
        item = await claim(client, tenant, q["id"])
        assert item is not None and item["id"] == chain[-1] and item["retry_count"] == attempt
        assert item["data"] == {"invoice": 7} and item["reference"] == "INV-7" and item["priority"] == 4
        r = await finish(client, tenant, q["id"], item["id"], status="failed",
                         error={"message": f"SAP timeout {attempt}", "kind": "application"})
        assert r.status_code == 200, r.text
        if attempt < 2:
            assert r.json()["status"] == "retried" and r.json()["retry_id"]
            chain.append(r.json()["retry_id"])
        else:
            assert r.json()["status"] == "failed" and r.json()["retry_id"] is None
    assert await claim(client, tenant, q["id"]) is None
    types = await log_types(redis, tenant.partition)
    assert types.count("queue_item.retried") == 2 and types.count("queue_item.failed") == 3
    assert len(set(chain)) == 3


async def test_failed_without_error_is_an_application_failure(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant, max_retries=1)
    item = await add(client, tenant, q["id"])
    await claim(client, tenant, q["id"])
    r = await finish(client, tenant, q["id"], item["id"], status="failed")
    assert r.json()["status"] == "retried" and r.json()["error"] == {"message": "", "kind": "application"}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"status": "done"}, 422, "status"),
        ({"status": "completed", "error": {"message": "x"}}, 422, "error"),
        ({"status": "failed", "error": {"message": "x", "kind": "cosmic"}}, 422, "error.kind"),
        ({"status": "in_progress"}, 422, "progress"),
        ({"status": "in_progress", "progress": "x", "result": 1}, 422, "result"),
        ({"status": "completed", "result": {"n": 2**80}}, 422, "result.n"),
        ({}, 422, "status"),
    ],
)
async def test_bad_updates_are_422(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, body: dict[str, Any],
    status: int, field: str,
) -> None:
    q = await make_queue(client, tenant)
    item = await add(client, tenant, q["id"])
    await claim(client, tenant, q["id"])
    before = await log_lengths(redis, settings)

    r = await finish(client, tenant, q["id"], item["id"], **body)

    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert await log_lengths(redis, settings) == before


async def test_unknown_item_and_item_of_another_queue_are_404(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    a = await make_queue(client, tenant, name="a")
    b = await make_queue(client, tenant, name="b")
    item = await add(client, tenant, a["id"])
    assert (await finish(client, tenant, b["id"], item["id"], status="completed")).status_code == 404
    assert (await finish(client, tenant, a["id"], "x" * 32, status="completed")).status_code == 404
    assert (await finish(client, tenant, a["id"], "x" * 100, status="completed")).status_code == 404
