"""The benchmarks' HTTP side: a free port, waiting for ``orq api``, and JSON calls through aiohttp.

aiohttp is the load generator because it costs ~0.1 ms of client CPU per request; httpx costs ~2 ms, and a
benchmark sharing two cores with the server it measures must not spend them on its own client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.helpers import free_port

__all__ = ["call", "free_port", "session", "wait_ready"]


def session(base: str, connections: int) -> aiohttp.ClientSession:
    """A session on ``base`` that raises on any reply other than 2xx."""
    return aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=connections), raise_for_status=True,
                                 timeout=aiohttp.ClientTimeout(total=120))


async def wait_ready(client: aiohttp.ClientSession, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with client.get("/readyz"):
                return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise TimeoutError("orq api did not start") from None
            await asyncio.sleep(0.1)


async def call(client: aiohttp.ClientSession, method: str, url: str, body: object, auth: str) -> Any:
    """Send ``body`` as JSON with ``Authorization: auth``; the decoded reply, or None for 204."""
    async with client.request(method, url, json=body, headers={"Authorization": auth}) as reply:
        return None if reply.status == 204 else await reply.json()
