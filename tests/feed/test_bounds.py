"""The feed hub's memory has a bound: a subscriber's buffer in bytes (not only in events), and how many
subscribers a tenant and the process may have."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.api.feed import FeedHub
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from tests.api.support import TenantHandle
from tests.feed.conftest import serve
from tests.feed.support import append_logs, receive
from tests.helpers import assert_eventually

PAD = 10_000


async def test_a_subscriber_holding_more_bytes_than_its_bound_is_dropped(redis: Redis, committer: Committer) -> None:
    hub = FeedHub(redis, 4, buffer=1_000, buffer_bytes=5 * PAD, block_ms=100)
    big, small = (TenantHandle(t, "", "pro", keys.partition_of(t, 4)) for t in ("big", "small"))
    heavy, light = hub.subscription(big.id), hub.subscription(small.id)
    await hub.subscribe(heavy)
    await hub.subscribe(light)
    try:
        await append_logs(committer, big, 10, pad=PAD)  # far fewer events than the buffer holds, far more bytes
        await append_logs(committer, small, 10)

        async def read() -> None:
            assert hub.stats.read == 20

        await assert_eventually(read)
        assert heavy.overflowed and hub.stats.dropped == 1 and hub.subscribers == 1
        assert not light.overflowed and len(await light.next_batch()) == 10
    finally:
        await hub.stop()


async def _refused(url: str) -> int | None:
    """The close code of a connection the server ends before sending anything (None if it stays open)."""
    async with connect(url) as ws:
        try:
            await receive(ws, 1, timeout=1.0)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return None
    return None


@pytest.mark.parametrize("limit", ["tenant", "process"])
async def test_subscribers_past_the_bound_are_refused_with_try_again(
    feed_settings: Settings, redis: Redis, limit: str
) -> None:
    async with serve(feed_settings) as live:
        hub: FeedHub = live.app.state.api.feed
        if limit == "tenant":
            hub.max_per_tenant = 2
        else:
            hub.max_subscribers = 2
        acme, other = await live.tenant("acme"), await live.tenant("other")
        async with connect(live.url(acme.api_key)), connect(live.url(acme.api_key)):
            assert await _refused(live.url(acme.api_key)) == 1013
            if limit == "tenant":
                assert await _refused(live.url(other.api_key)) is None, "another tenant still subscribes"
            else:
                assert await _refused(live.url(other.api_key)) == 1013
        assert await _refused(live.url(acme.api_key)) is None, "room again once they left"
