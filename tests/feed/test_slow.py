"""A subscriber that stops reading is dropped with 4429, the others keep up, and it resumes losslessly."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.infra.settings import Settings
from shared.log.commit import Committer
from tests.feed.conftest import serve
from tests.feed.support import append_logs, receive
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

EVENTS = 400
PAD = 32 * 1024  # large events fill the socket buffers quickly


def stalled_socket(base: str) -> socket.socket:
    """A connected socket with a tiny receive buffer: once its owner stops reading, the server must wait."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def metric(base: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_a_slow_subscriber_is_dropped_without_slowing_the_others(
    feed_settings: Settings, redis: Redis, committer: Committer
) -> None:
    # A buffer of two reads: a client that keeps up never has more waiting.
    async with serve(feed_settings, buffer=20, read_count=10) as live:
        tenant = await live.tenant()
        # The slow client reads nothing until told; no compression, so every byte counts against its buffers.
        slow = await connect(live.url(tenant.api_key), sock=stalled_socket(live.base), compression=None, max_queue=1)
        async with connect(live.url(tenant.api_key), max_queue=None) as fast:
            ids = await append_logs(committer, tenant, EVENTS, pad=PAD)
            # Everything reaches the fast client while the slow one has not read a byte.
            assert [m["id"] for m in await receive(fast, EVENTS, timeout=60)] == ids

            async def dropped() -> bool:
                return await metric(live.base, "orq_feed_dropped_total") == 1

            await assert_eventually(dropped, timeout=15, message="slow subscriber dropped")
            assert await metric(live.base, "orq_feed_subscribers") == 1

        # Now the slow client reads: what the server had sent, then the close telling where to resume.
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(json.loads(await asyncio.wait_for(slow.recv(), 15)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        assert 0 < len(got) < EVENTS
        assert [m["id"] for m in got] == ids[: len(got)]
        assert f"since={got[-1]['id']}" in closed.value.rcvd.reason

        async with connect(live.url(tenant.api_key, since=got[-1]["id"]), max_queue=None) as again:
            rest = await receive(again, EVENTS - len(got), timeout=60)
        assert [m["id"] for m in got + rest] == ids
