"""``serve()``: the API under a real uvicorn on a real socket, stopped by its ``stop`` event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from services.api.server import serve
from shared.infra.settings import Settings
from tests.api.support import admin_headers
from tests.helpers import free_port, until_answering


async def _raw_request(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request by hand (so a chunked body is really chunked on the wire) and read the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


@pytest.fixture
async def server(settings: Settings, redis: Redis) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings.with_overrides(max_body_bytes=2048), stop, "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    await until_answering(f"{base}/healthz", task, message="api listening")
    yield base, port
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_serves_until_stopped(settings: Settings, redis: Redis) -> None:
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    await until_answering(f"{base}/readyz", task, message="api ready")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/api/tenants", json={"name": "live", "plan": "pro"}, headers=admin_headers(settings))
        assert r.status_code == 201
        key = r.json()["api_key"]
        r = await c.get("/api/tenants/me", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200

    stop.set()
    await asyncio.wait_for(task, 20)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as c:
            await c.get(f"{base}/healthz")


async def test_body_limit_on_the_wire(server: tuple[str, int], settings: Settings) -> None:
    base, port = server
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/api/tenants", json={"name": "x" * 3000, "plan": "pro"}, headers=admin_headers(settings))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    head = (
        b"POST /api/tenants HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + settings.admin_token.encode() + b"\r\n\r\n"
    )
    reply = await _raw_request(port, head, [b" " * 1000] * 3)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply
