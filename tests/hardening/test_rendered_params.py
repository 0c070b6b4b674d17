"""Rendered params are checked against the action's schema at run time, as at save time (DESIGN §12): a
templated ``delay`` beyond its maximum fails its step at once instead of holding an executor slot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.domain.actions.runtime import Actions
from shared.domain.actions.schemas import MAX_DELAY_MS
from shared.infra.errors import StepFailed as StepFailedError
from shared.log.events import StepCompleted, StepFailed
from tests.api.support import TenantHandle
from tests.hardening.conftest import Api
from tests.hardening.support import wait_for_event

DELAY = {"name": "nap", "retry": {"attempts": 1}, "steps": [{"action": "delay", "params": {"ms": "{{ params.ms }}"}}]}


async def _execute(client: httpx.AsyncClient, tenant: TenantHandle, params: dict[str, Any]) -> str:
    saved = await client.post("/api/workflows", json=DELAY, headers=tenant.headers)
    assert saved.status_code == 201, saved.text
    r = await client.post(f"/api/workflows/{saved.json()['id']}/execute", json={"params": params},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


async def test_a_templated_delay_beyond_the_maximum_fails_at_once(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = api
    start_executor()
    started = time.monotonic()
    execution_id = await _execute(client, tenant, {"ms": 10**12})
    failed = await wait_for_event(redis, tenant.partition, execution_id, StepFailed, timeout=10)
    assert isinstance(failed, StepFailed)
    assert "params.ms" in failed.error and str(MAX_DELAY_MS) in failed.error, failed.error
    assert failed.duration_ms < 1000 and time.monotonic() - started < 10


async def test_a_templated_delay_within_the_maximum_runs(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = api
    start_executor()
    execution_id = await _execute(client, tenant, {"ms": 5})
    done = await wait_for_event(redis, tenant.partition, execution_id, StepCompleted)
    assert isinstance(done, StepCompleted) and done.output == {"slept_ms": 5}


@pytest.mark.parametrize(("action", "params", "named"), [
    ("delay", {"ms": -1}, "params.ms"),
    ("delay", {"ms": MAX_DELAY_MS + 1}, "params.ms"),
    ("delay", {"ms": "soon"}, "ms"),
    ("log", {"message": "x", "level": "loud"}, "level"),
    ("http_request", {"url": "http://example.com", "method": "FETCH"}, "method"),
])
async def test_parse_applies_the_save_time_checks(action: str, params: dict[str, Any], named: str) -> None:
    async with httpx.AsyncClient() as client:
        actions = Actions(client, plugins={})
        with pytest.raises(StepFailedError, match=named):
            actions.parse(action, params)
        assert actions.parse("delay", {"ms": MAX_DELAY_MS}).ms == MAX_DELAY_MS
