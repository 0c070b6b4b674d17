"""An action's output that JSON allows but the log cannot store (an integer beyond 64 bits) fails its step with
a clear error; before, the encoder's OverflowError escaped the run and left the execution running."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from shared.log.events import ExecutionFailed, StepFailed
from tests.api.support import TenantHandle
from tests.hardening.support import recording_server, wait_for_event


async def test_a_response_with_a_number_beyond_64_bits_fails_the_step(
    make_api: Callable[..., Any], tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = await make_api(allow_private_networks=True)
    start_executor(allow_private=True)
    workflow = {"name": "huge", "retry": {"attempts": 1},
                "steps": [{"action": "http_request", "params": {"url": "{{ params.url }}"}}]}
    with recording_server(body=b'{"n": ' + str(2**70).encode() + b"}") as server:
        r = await client.post("/api/workflows", json=workflow, headers=tenant.headers)
        assert r.status_code == 201, r.text
        r = await client.post(f"/api/workflows/{r.json()['id']}/execute", json={"params": {"url": server.url}},
                              headers=tenant.headers)
        assert r.status_code == 202, r.text
        execution_id = r.json()["execution_id"]
        failed = await wait_for_event(redis, tenant.partition, execution_id, StepFailed)
        ended = await wait_for_event(redis, tenant.partition, execution_id, ExecutionFailed)
    assert isinstance(failed, StepFailed) and "not serialisable" in failed.error, failed.error
    assert isinstance(ended, ExecutionFailed)


