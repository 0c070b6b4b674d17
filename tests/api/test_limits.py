"""Request bodies over ``max_body_bytes`` are refused with 413 before they are read whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.infra.settings import Settings
from tests.api.support import TenantHandle, create_tenant, log_lengths

LIMIT = 1024


@pytest.fixture
async def small(settings: Settings, redis: Redis, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.with_overrides(max_body_bytes=LIMIT), redis, engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orq.test") as client:
        yield client
    await app.state.api.committer.close()


@pytest.fixture
async def small_tenant(small: httpx.AsyncClient, settings: Settings) -> TenantHandle:
    return await create_tenant(small, settings)


class Body:
    """A streamed body that records how many chunks the server pulled."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size, self.pulled = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * self.size


def _workflow_padded(size: int) -> bytes:
    head = b'{"name": "x", "steps": [{"action": "noop"}], "description": "'
    return head + b"a" * (size - len(head) - 2) + b'"}'


async def test_declared_length_over_the_limit_is_refused_unread(
    small: httpx.AsyncClient, redis: Redis, settings: Settings, small_tenant: TenantHandle
) -> None:
    before = await log_lengths(redis, settings)
    body = Body(chunks=10, size=LIMIT)
    r = await small.post(
        "/api/workflows",
        content=body,
        headers={**small_tenant.headers, "Content-Length": str(10 * LIMIT), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert body.pulled == 0
    assert await log_lengths(redis, settings) == before


async def test_chunked_body_over_the_limit_is_refused_midway(
    small: httpx.AsyncClient, redis: Redis, settings: Settings, small_tenant: TenantHandle
) -> None:
    before = await log_lengths(redis, settings)
    body = Body(chunks=100, size=400)
    r = await small.post("/api/workflows", content=body, headers=small_tenant.headers)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert body.pulled <= 4  # the third chunk passes 1024 bytes; nothing after it is read
    assert await log_lengths(redis, settings) == before


async def test_body_at_the_limit_is_accepted(small: httpx.AsyncClient, small_tenant: TenantHandle) -> None:
    r = await small.post("/api/workflows", content=_workflow_padded(LIMIT), headers=small_tenant.headers)
    assert r.status_code == 201, r.text
    r = await small.post("/api/workflows", content=_workflow_padded(LIMIT + 1), headers=small_tenant.headers)
    assert r.status_code == 413


async def test_limit_applies_before_authentication(small: httpx.AsyncClient) -> None:
    r = await small.post("/api/workflows", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413


async def test_bad_content_length_is_400(small: httpx.AsyncClient, small_tenant: TenantHandle) -> None:
    r = await small.post(
        "/api/workflows", content=Body(1, 10), headers={**small_tenant.headers, "Content-Length": "ten"}
    )
    assert r.status_code == 400
