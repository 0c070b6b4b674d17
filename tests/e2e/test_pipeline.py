"""The core pipeline end to end, through the HTTP API alone, on SQLite and on MariaDB."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.readmodel.schema import execution_steps, executions
from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow


async def create_workflow(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/api/workflows", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def execute(client: httpx.AsyncClient, workflow_id: str, **body: Any) -> str:
    response = await client.post(f"/api/workflows/{workflow_id}/execute", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return str(response.json()["execution_id"])


async def wait_for(client: httpx.AsyncClient, execution_id: str, status: str, timeout: float = 30,
                   **expected: Any) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        response = await client.get(f"/api/executions/{execution_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["status"] == status, body["status"]
        for key, value in expected.items():
            assert body[key] == value, (key, body[key])
        return body

    return await assert_eventually(check, timeout=timeout, message=f"execution {status}")


async def test_three_steps_complete_with_step_rows_in_sql(tenant: httpx.AsyncClient, engine: AsyncEngine) -> None:
    workflow_id = await create_workflow(tenant, {"name": "invoice", "steps": [
        {"action": "set", "label": "read", "params": {"values": {"total": "{{ params.total }}"}}},
        {"action": "delay", "label": "think", "params": {"ms": 50}},
        {"action": "log", "label": "report", "params": {"message": "total {{ steps.0.output.total }}"}},
    ]})
    execution_id = await execute(tenant, workflow_id, params={"total": 42})
    body = await wait_for(tenant, execution_id, "completed")
    assert body["steps_total"] == 3 and body["steps_completed"] == 3 and body["steps_failed"] == 0
    assert body["duration_ms"] >= 50
    assert [s["status"] for s in body["steps"]] == ["completed"] * 3
    assert body["steps"][0]["output_data"] == {"total": 42}
    async with engine.connect() as conn:
        rows = (await conn.execute(select(execution_steps).where(execution_steps.c.execution_id == execution_id)
                                   .order_by(execution_steps.c.step_index))).mappings().all()
        run = (await conn.execute(select(executions).where(executions.c.id == execution_id))).mappings().one()
    assert [r["label"] for r in rows] == ["read", "think", "report"]
    assert all(r["duration_ms"] is not None and r["started_at"] and r["completed_at"] for r in rows)
    assert rows[1]["duration_ms"] >= 50
    assert run["status"] == "completed" and run["duration_ms"] >= 50


async def test_fails_twice_then_passes(tenant: httpx.AsyncClient) -> None:
    workflow_id = await create_workflow(tenant, {
        "name": "flaky", "steps": [{"action": "fail", "params": {"until_attempt": 3}}],
        "retry": {"attempts": 3, "backoff": {"type": "exponential", "delay_ms": 200}},
    })
    execution_id = await execute(tenant, workflow_id)
    body = await wait_for(tenant, execution_id, "completed", retry_count=2)
    assert body["dead_lettered"] is False


async def test_always_failing_is_dead_lettered_and_retried_from_dlq(tenant: httpx.AsyncClient) -> None:
    workflow_id = await create_workflow(tenant, {
        "name": "doomed", "steps": [{"action": "fail", "params": {"message": "no such invoice"}}],
        "retry": {"attempts": 2, "backoff": {"type": "fixed", "delay_ms": 100}},
    })
    execution_id = await execute(tenant, workflow_id)
    body = await wait_for(tenant, execution_id, "failed", dead_lettered=True)
    assert body["error_message"] == "no such invoice"
    dlq = (await tenant.get("/api/dlq")).json()
    assert [item["id"] for item in dlq["items"]] == [execution_id]
    retried = await tenant.post(f"/api/dlq/{execution_id}/retry")
    assert retried.status_code == 202, retried.text

    async def out_of_dlq() -> bool:
        items = (await tenant.get("/api/dlq")).json()["items"]
        return not items

    await assert_eventually(out_of_dlq, timeout=15, message="left the DLQ")
    body = await wait_for(tenant, execution_id, "failed", dead_lettered=True)
    assert body["retry_count"] >= 2, "the DLQ retry ran a new series of attempts"
    async def back_in_dlq() -> bool:
        return [item["id"] for item in (await tenant.get("/api/dlq")).json()["items"]] == [execution_id]

    await assert_eventually(back_in_dlq, timeout=15, message="dead-lettered again")
    purged = await tenant.delete(f"/api/dlq/{execution_id}")
    assert purged.status_code == 204
    await assert_eventually(out_of_dlq, timeout=15, message="purged from the DLQ")


async def test_cancel_a_running_execution(tenant: httpx.AsyncClient, deployment: Deployment) -> None:
    workflow_id = await create_workflow(tenant, {"name": "slow", "steps": [
        {"action": "delay", "params": {"ms": 20_000}}, {"action": "noop"}]})
    execution_id = await execute(tenant, workflow_id)
    await wait_for(tenant, execution_id, "running")
    cancelled = await tenant.post(f"/api/executions/{execution_id}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
    body = await wait_for(tenant, execution_id, "cancelled")
    assert body["steps_completed"] == 0
    again = await tenant.post(f"/api/executions/{execution_id}/cancel")
    assert again.status_code == 409
