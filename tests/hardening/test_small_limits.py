"""Small refusals (issue 12 item 7): a ``since`` that is no Redis stream id (a part past 2^64 - 1) closes the
feed with 4400, not 1013; an empty filter on the executions list is a 422, not "no filter"."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.api.support import TenantHandle, create_tenant
from tests.hardening.conftest import Api, Served

MAX_U64 = 2**64 - 1


async def _close_code(url: str) -> tuple[int, str]:
    async with connect(url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize("since", ["1-99999999999999999999", str(2**64), f"{2**64}-0", f"{MAX_U64}-{2**64}",
                                   "99999999999999999999"])
async def test_a_since_past_64_bits_closes_4400(served: Served, since: str) -> None:
    async with httpx.AsyncClient(base_url=served.base) as client:
        tenant = await create_tenant(client, served.settings, plan="pro")
    ws = served.base.replace("http://", "ws://") + "/ws/events"
    code, reason = await _close_code(f"{ws}?token={tenant.api_key}&since={since}")
    assert code == 4400 and "since" in reason, (code, reason)


async def test_the_largest_stream_id_is_a_valid_since(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base) as client:
        tenant = await create_tenant(client, served.settings, plan="pro")
    ws = served.base.replace("http://", "ws://") + "/ws/events"
    async with connect(f"{ws}?token={tenant.api_key}&since={MAX_U64}-{MAX_U64}") as socket:
        with pytest.raises(TimeoutError):  # accepted and live: nothing to send, no close
            await asyncio.wait_for(socket.recv(), 1)


@pytest.mark.parametrize(("query", "field"), [("status=", "status"), ("workflow_id=", "workflow_id"),
                                            ("workflow_id=x&status=", "status")])
async def test_an_empty_filter_is_refused(api: Api, tenant: TenantHandle, query: str, field: str) -> None:
    client, _ = api
    r = await client.get(f"/api/executions?{query}", headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def test_filters_still_work(api: Api, tenant: TenantHandle) -> None:
    client, _ = api
    for query in ("", "status=queued", "workflow_id=abc", "status=failed&workflow_id=abc"):
        r = await client.get(f"/api/executions?{query}", headers=tenant.headers)
        assert r.status_code == 200 and r.json()["items"] == [], (query, r.text)
