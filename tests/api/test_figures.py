"""Honest figures on ``GET /api/executions/{id}`` (issue 16, item 3), from real executors and the real projector
on SQLite and MariaDB: a cancel closes the running step, ``error_message`` is the outcome's, a DLQ retry's
``duration_ms`` leaves out the time spent in the DLQ, progress counts completed steps, and a dashboard run is
``manual``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.infra.settings import Settings
from tests.api.support import TenantHandle, create_workflow, execute, executor, get_execution, projector
from tests.helpers import assert_eventually, switchable_server

TIMEOUT_S = 20


def _loopback_open(settings: Settings) -> Settings:
    # The robot of the DLQ test listens on loopback (its URL is a run's param: the API checks literal URLs).
    return settings.with_overrides(allow_private_networks=True)


async def _when(client: httpx.AsyncClient, tenant: TenantHandle, execution_id: str,
                check: Any) -> dict[str, Any]:
    """The execution once ``check(body)`` holds (assertions inside ``check``)."""

    async def probe() -> dict[str, Any]:
        body = await get_execution(client, tenant, execution_id)
        check(body)
        return body

    result: dict[str, Any] = await assert_eventually(probe, timeout=TIMEOUT_S)
    return result


def _status(status: str) -> Any:
    def check(body: dict[str, Any]) -> None:
        assert body["status"] == status, str(body)
    return check


async def test_cancel_closes_the_running_step(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings, redis: Redis
) -> None:
    wf = await create_workflow(client, tenant, {"name": "long", "steps": [
        {"action": "noop"}, {"action": "delay", "params": {"ms": 15_000}}, {"action": "noop"}]})
    async with executor(_loopback_open(settings)), projector(settings):
        execution_id = await execute(client, tenant, wf["id"])

        def step_one_running(body: dict[str, Any]) -> None:
            assert body["steps"][1]["status"] == "running", body["steps"]

        await _when(client, tenant, execution_id, step_one_running)
        r = await client.post(f"/api/executions/{execution_id}/cancel", headers=tenant.headers)
        assert r.status_code == 202, r.text
        body = await _when(client, tenant, execution_id, _status("cancelled"))
    assert [s["status"] for s in body["steps"]] == ["completed", "cancelled", "pending"]
    cancelled = body["steps"][1]
    assert cancelled["completed_at"] is not None and cancelled["duration_ms"] is not None
    assert body["duration_ms"] is not None and body["steps_completed"] == 1


async def test_a_run_that_succeeds_on_attempt_two_shows_no_error(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings, redis: Redis
) -> None:
    wf = await create_workflow(client, tenant, {
        "name": "second time lucky", "retry": {"attempts": 2, "backoff": {"type": "fixed", "delay_ms": 0}},
        "steps": [{"action": "fail", "params": {"message": "boom", "until_attempt": 2}}]})
    async with executor(_loopback_open(settings)), projector(settings):
        execution_id = await execute(client, tenant, wf["id"])
        body = await _when(client, tenant, execution_id, _status("completed"))
    assert body["error_message"] is None and body["attempt"] == 2 and body["retry_count"] == 1
    [step] = body["steps"]
    assert step["status"] == "completed"
    assert step["error_message"] == "boom"  # attempt 1's error, kept in the attempt history


async def test_a_dlq_retry_counts_running_time_only_and_progress_counts_completed_steps(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings, redis: Redis
) -> None:
    async with switchable_server() as state, executor(_loopback_open(settings)), projector(settings):
        wf = await create_workflow(client, tenant, {"name": "robot", "retry": {"attempts": 1}, "steps": [
            {"action": "noop"}, {"action": "noop"},
            {"action": "http_request", "params": {"method": "GET", "url": "{{ params.url }}"}}]})
        execution_id = await execute(client, tenant, wf["id"], params={"url": state["url"]})

        def dead_lettered(body: dict[str, Any]) -> None:
            assert body["dead_lettered"] and body["status"] == "failed", body

        failed = await _when(client, tenant, execution_id, dead_lettered)
        assert [s["status"] for s in failed["steps"]] == ["completed", "completed", "failed"]
        assert failed["steps_completed"] == 2 and failed["progress"] == 66

        await asyncio.sleep(2)  # in the DLQ: not running time
        state["status"] = 200
        r = await client.post(f"/api/dlq/{execution_id}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text
        body = await _when(client, tenant, execution_id, _status("completed"))
    assert body["progress"] == 100 and body["error_message"] is None
    assert body["duration_ms"] is not None and body["duration_ms"] < 1_500, body


async def test_execute_records_a_manual_run(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings
) -> None:
    wf = await create_workflow(client, tenant)
    async with projector(settings):
        manual = await execute(client, tenant, wf["id"], trigger_type="manual")
        api = await execute(client, tenant, wf["id"])
        body = await _when(client, tenant, manual, _status("queued"))
        assert body["trigger_type"] == "manual"
        body = await _when(client, tenant, api, _status("queued"))
        assert body["trigger_type"] == "api"
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"trigger_type": "schedule"},
                          headers=tenant.headers)
    assert r.status_code == 422, r.text
