"""Trigger service tests: the real API app to set things up, and a firer on its own committer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.domain.triggers.firing import Firer
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import Event, decode
from tests.api.conftest import api_redis, app, client, other_tenant, tenant
from tests.api.support import TenantHandle, create_workflow

__all__ = ["api_redis", "app", "client", "other_tenant", "tenant"]


@pytest.fixture
async def firer(redis: Redis, settings: Settings) -> AsyncIterator[Firer]:
    committer = commit_script.committer(redis)
    yield Firer(redis, committer, settings)
    await committer.close()


async def make_trigger(client: httpx.AsyncClient, tenant: TenantHandle, trigger_type: str,
                       workflow: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    wf = workflow or await create_workflow(client, tenant)
    r = await client.post("/api/triggers", headers=tenant.headers,
                          json={"workflow_id": wf["id"], "trigger_type": trigger_type, "config": config})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def events_of(redis: Redis, p: int, *types: str) -> list[Event]:
    """The events of partition ``p``'s log, of these types (all when none given), in order."""
    return [decode(r.body, r.id) for r in records_of(await redis.xrange(keys.log(p))) if not types or r.type in types]
