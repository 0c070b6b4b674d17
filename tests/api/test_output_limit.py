"""A step's output over ORQ_MAX_OUTPUT_BYTES fails that step where it is produced (issue 12, item 1).

Before, a workflow whose ``set`` steps each referenced the previous output twice grew a 16 MiB output: MariaDB
refused the row and the partition's projection stalled for every tenant in it. Real executor, projector,
SQLite and MariaDB.
"""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis

from shared.infra.settings import Settings
from tests.api.support import TenantHandle, create_tenant, create_workflow, executor, get_execution, projector
from tests.helpers import assert_eventually

DOUBLING = {
    "name": "doubling",
    "retry": {"attempts": 1},
    "steps": [{"action": "set", "params": {"values": {"seed": "x" * 500}}}] + [
        {"action": "set", "params": {"values": {"left": f"{{{{ steps.{i}.output }}}}",
                                                "right": f"{{{{ steps.{i}.output }}}}"}}}
        for i in range(15)
    ],
}


async def _neighbour(client: httpx.AsyncClient, settings: Settings, of: TenantHandle) -> TenantHandle:
    """Another tenant in the same partition: it shares the projection that a poisoned row would stall."""
    for n in range(64):
        other = await create_tenant(client, settings, name=f"neighbour-{n}")
        if other.partition == of.partition:
            return other
    raise AssertionError("no tenant landed in the partition")


async def test_an_oversized_output_fails_its_step_and_the_partition_keeps_projecting(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings, redis: Redis
) -> None:
    neighbour = await _neighbour(client, settings, tenant)
    doubling = await create_workflow(client, tenant, DOUBLING)
    plain = await create_workflow(client, neighbour)
    async with executor(settings), projector(settings):
        r = await client.post(f"/api/workflows/{doubling['id']}/execute", json={}, headers=tenant.headers)
        big = r.json()["execution_id"]

        async def failed() -> dict[str, Any]:
            body = await get_execution(client, tenant, big)
            assert body["status"] == "failed", body["status"]
            return body

        body = await assert_eventually(failed, timeout=30, message="the doubling run failed")
        r = await client.post(f"/api/workflows/{plain['id']}/execute", json={}, headers=neighbour.headers)
        small = r.json()["execution_id"]

        async def completed() -> bool:
            return bool((await get_execution(client, neighbour, small))["status"] == "completed")

        await assert_eventually(completed, timeout=30, message="the neighbour's run was projected")
    assert "output_too_large" in body["error_message"]
    assert "ORQ_MAX_OUTPUT_BYTES" in body["error_message"]
    failed_steps = [s for s in body["steps"] if s["status"] == "failed"]
    assert len(failed_steps) == 1 and "output_too_large" in failed_steps[0]["error_message"]
    done = [s for s in body["steps"] if s["status"] == "completed"]
    assert all(len(str(s["output_data"])) <= settings.max_output_bytes for s in done)
