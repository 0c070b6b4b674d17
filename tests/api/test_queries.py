"""Query endpoints read the SQL projection: filled here by the real executor and projector running in the
background, end to end from ``POST …/execute`` to ``GET /api/executions/{id}``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import Settings
from tests.api.support import TenantHandle, create_workflow, execute, executor, projector
from tests.helpers import assert_eventually

PIPELINE: dict[str, Any] = {
    "name": "pipeline",
    "steps": [
        {"action": "set", "label": "seed", "params": {"values": {"x": "{{ params.x }}"}}},
        {"action": "log", "params": {"message": "x is {{ steps.0.output.x }}"}},
    ],
}
BROKEN: dict[str, Any] = {
    "name": "broken",
    "steps": [{"action": "fail", "params": {"message": "nope"}}],
    "retry": {"attempts": 1},
}
DETAIL_FIELDS = {
    "id",
    "workflow_id",
    "status",
    "priority",
    "retry_count",
    "trigger_type",
    "steps_total",
    "steps_completed",
    "steps_failed",
    "queued_at",
    "started_at",
    "completed_at",
    "duration_ms",
    "result",
    "error_message",
    "dead_lettered",
    "steps",
    "crash_count",
    "attempt",
    "progress",
}
STEP_FIELDS = {
    "step_index",
    "action",
    "label",
    "status",
    "started_at",
    "completed_at",
    "duration_ms",
    "output_data",
    "error_message",
    "worker_id",
    "child_execution_id",
}


async def test_executions_and_dlq_end_to_end(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    pipeline = await create_workflow(client, tenant, PIPELINE)
    broken = await create_workflow(client, tenant, BROKEN)
    done = [await execute(client, tenant, pipeline["id"], params={"x": i}) for i in range(3)]
    # Newest first is by queued_at (ms), then by id: queue the last one in a later millisecond, or two runs
    # queued in the same one come back in id order and "newest first" below would depend on chance.
    await asyncio.sleep(0.002)
    dead = await execute(client, tenant, broken["id"])
    theirs = await execute(client, other_tenant, (await create_workflow(client, other_tenant))["id"])

    async with projector(settings), executor(settings):

        async def all_finished() -> None:
            r = await client.get("/api/executions", params={"status": "completed"}, headers=tenant.headers)
            assert {e["id"] for e in r.json()["items"]} == set(done)
            r = await client.get("/api/dlq", headers=tenant.headers)
            assert [e["id"] for e in r.json()["items"]] == [dead]

        await assert_eventually(all_finished, timeout=30, message="executions run and projected")

        r = await client.get(f"/api/executions/{done[1]}", headers=tenant.headers)
        assert r.status_code == 200
        detail = r.json()
        assert set(detail) == DETAIL_FIELDS
        assert detail["status"] == "completed" and detail["workflow_id"] == pipeline["id"]
        assert detail["steps_total"] == detail["steps_completed"] == 2 and detail["steps_failed"] == 0
        assert detail["trigger_type"] == "api" and detail["dead_lettered"] is False and detail["priority"] == 5
        assert detail["queued_at"].endswith("Z") and detail["completed_at"].endswith("Z")
        assert [set(s) for s in detail["steps"]] == [STEP_FIELDS, STEP_FIELDS]
        assert [s["status"] for s in detail["steps"]] == ["completed", "completed"]
        assert detail["steps"][0]["label"] == "seed" and detail["steps"][0]["output_data"] == {"x": 1}

        r = await client.get(f"/api/executions/{dead}", headers=tenant.headers)
        failed = r.json()
        assert failed["status"] == "failed" and failed["dead_lettered"] is True and "nope" in failed["error_message"]
        assert failed["steps"][0]["status"] == "failed"

        # filters and paging
        r = await client.get("/api/executions", params={"workflow_id": broken["id"]}, headers=tenant.headers)
        assert [e["id"] for e in r.json()["items"]] == [dead]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/executions", params=params, headers=tenant.headers)).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted([*done, dead]) and len(seen) == 4
        assert seen[0] == dead  # newest first

        # tenants see only their own
        assert (await client.get(f"/api/executions/{theirs}", headers=tenant.headers)).status_code == 404
        r = await client.get("/api/executions", headers=other_tenant.headers)
        assert dead not in {e["id"] for e in r.json()["items"]}
        assert (await client.get("/api/dlq", headers=other_tenant.headers)).json()["items"] == []

        # purge: out of the DLQ, still failed in the history
        assert (await client.delete(f"/api/dlq/{dead}", headers=tenant.headers)).status_code == 204

        async def purged() -> None:
            assert (await client.get("/api/dlq", headers=tenant.headers)).json()["items"] == []

        await assert_eventually(purged, timeout=20, message="purge projected")
        assert (await client.get(f"/api/executions/{dead}", headers=tenant.headers)).json()["status"] == "failed"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/executions", {"limit": "0"}, "limit"),
        ("/api/executions", {"limit": "201"}, "limit"),
        ("/api/executions", {"limit": "ten"}, "limit"),
        ("/api/executions", {"limit": "²"}, "limit"),
        ("/api/executions", {"status": "sleeping"}, "status"),
        ("/api/executions", {"cursor": "garbage!"}, "cursor"),
        ("/api/workflows", {"cursor": "eyJ4IjoxfQ"}, "cursor"),
        ("/api/dlq", {"limit": "-1"}, "limit"),
    ],
)
async def test_bad_query_parameters_are_422(
    client: httpx.AsyncClient, tenant: TenantHandle, path: str, params: dict[str, str], field: str
) -> None:
    r = await client.get(path, params=params, headers=tenant.headers)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field


async def test_empty_lists(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    for path in ("/api/executions", "/api/workflows", "/api/dlq"):
        r = await client.get(path, headers=tenant.headers)
        assert r.status_code == 200
        assert r.json() == {"items": [], "next_cursor": None}
