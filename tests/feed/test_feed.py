"""``WS /ws/events`` against a real server: order, shape, filters, auth, resume, isolation, fan-out."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from tests.api.support import create_workflow
from tests.feed.conftest import LiveApi, serve
from tests.feed.support import append_logs, receive, tenant_ids
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow


async def closed_code(ws: object, timeout: float = 5.0) -> int:
    """The close code, asserting no event arrived before the close."""
    with pytest.raises(ConnectionClosed) as closed:
        message = await asyncio.wait_for(ws.recv(), timeout)  # type: ignore[attr-defined]
        pytest.fail(f"an event arrived before the close: {message}")
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code


async def test_events_arrive_in_order_with_the_documented_shape(live: LiveApi, committer: Committer) -> None:
    tenant = await live.tenant()
    async with connect(live.ws, additional_headers=tenant.headers) as ws:
        ids = await append_logs(committer, tenant, 50)
        got = await receive(ws, 50)
    assert [m["id"] for m in got] == ids
    first = got[0]
    assert {"id", "type", "tenant_id", "aggregate_id", "ts", "data"} <= set(first)
    assert first["type"] == "execution.log" and first["tenant_id"] == tenant.id
    assert first["aggregate_id"] == "run-1" and isinstance(first["ts"], int)
    assert [m["data"]["message"] for m in got] == [str(i) for i in range(50)]


async def test_batch_mode_sends_arrays_of_events_in_order(live: LiveApi, committer: Committer) -> None:
    tenant = await live.tenant()
    ids = await append_logs(committer, tenant, 300)
    async with connect(live.url(tenant.api_key, since="0", batch="1")) as ws:
        more = await append_logs(committer, tenant, 50, start=300)
        got: list[dict[str, object]] = []
        while len(got) < 351:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert isinstance(message, list) and message
            got += message
    assert [m["id"] for m in got][1:] == ids + more  # after tenant.created
    assert got[0]["type"] == "tenant.created"


async def test_a_real_command_shows_up_on_the_feed(live: LiveApi) -> None:
    tenant = await live.tenant()
    async with httpx.AsyncClient(base_url=live.base) as client, connect(live.url(tenant.api_key)) as ws:
        workflow = await create_workflow(client, tenant)
        [saved] = await receive(ws, 1)
        r = await client.post(f"/api/workflows/{workflow['id']}/execute", headers=tenant.headers)
        [queued] = await receive(ws, 1)
    assert saved["type"] == "workflow.saved"
    assert queued["type"] == "execution.queued" and queued["aggregate_id"] == r.json()["execution_id"]
    assert queued["data"]["workflow_id"] == workflow["id"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({}, 4401),
        ({"token": "orq_nobody_" + "x" * 40}, 4401),
        ({"token": "not-a-key"}, 4401),
        ({"token": "feed-admin"}, 4403),
    ],
)
async def test_a_refused_key_closes_before_any_event(
    live: LiveApi, committer: Committer, query: dict[str, str], code: int
) -> None:
    tenant = await live.tenant()
    await append_logs(committer, tenant, 5)
    async with connect(live.url(**query, since="0")) as ws:
        await append_logs(committer, tenant, 5)
        assert await closed_code(ws) == code


@pytest.mark.parametrize(
    "params",
    [{"since": "yesterday"}, {"since": "1-2-3"}, {"types": "execution.nope"}, {"execution_id": "x" * 65},
     {"batch": "maybe"}],
)
async def test_bad_parameters_close_with_4400(live: LiveApi, params: dict[str, str]) -> None:
    tenant = await live.tenant()
    async with connect(live.url(tenant.api_key, **params)) as ws:
        assert await closed_code(ws) == 4400
        assert ws.close_reason and next(iter(params)) in ws.close_reason


async def test_filters_by_execution_and_type(live: LiveApi, committer: Committer) -> None:
    tenant = await live.tenant()
    async with (
        connect(live.url(tenant.api_key, execution_id="run-2")) as by_execution,
        connect(live.url(tenant.api_key, types="workflow.*,execution.log")) as by_type,
        connect(live.url(tenant.api_key, types="step.completed")) as none_wanted,
        httpx.AsyncClient(base_url=live.base) as client,
    ):
        await append_logs(committer, tenant, 3, execution_id="run-1")
        ids = await append_logs(committer, tenant, 2, execution_id="run-2", start=3)
        await create_workflow(client, tenant)
        got = await receive(by_execution, 2)
        assert [m["id"] for m in got] == ids
        typed = await receive(by_type, 6)
        assert [m["type"] for m in typed] == ["execution.log"] * 5 + ["workflow.saved"]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(none_wanted.recv(), 0.5)


async def test_resume_with_since_misses_and_duplicates_nothing(
    live: LiveApi, committer: Committer, redis: Redis
) -> None:
    """Events keep flowing while the client drops and reconnects (replay and live delivery overlap)."""
    tenant = await live.tenant()
    total = 600
    expected = total + 1  # and the tenant.created event, replayed with since=0

    async def produce() -> None:
        for start in range(0, total, 20):
            await append_logs(committer, tenant, 20, start=start)
            await asyncio.sleep(0.01)

    received: list[dict[str, object]] = []
    producer = asyncio.create_task(produce())
    since: str | None = None
    sessions = 0
    while len(received) < expected and sessions < 100:
        final = producer.done()  # short sessions while events flow, then one that reads to the end
        sessions += 1
        # max_queue=None: the client keeps reading while it closes (a full queue would stall its close).
        async with connect(live.url(tenant.api_key, since=since or "0"), max_queue=None) as ws:
            want = None if final else 40
            while (want is None or want > 0) and len(received) < expected:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                except TimeoutError:
                    break
                received.append(message)
                since = str(message["id"])
                want = None if want is None else want - 1
        await asyncio.sleep(0.02)  # events appended while disconnected must come with the replay
    await producer
    assert sessions >= 4, "the test must reconnect while events flow"
    assert [m["id"] for m in received] == await tenant_ids(redis, tenant)
    logs = [m["data"]["message"] for m in received if m["type"] == "execution.log"]  # type: ignore[index]
    assert logs == [str(i) for i in range(total)]


async def test_two_tenants_never_see_each_others_events(
    live: LiveApi, committer: Committer, feed_settings: Settings
) -> None:
    first = await live.tenant("a")
    second = await live.tenant("b")
    while second.partition != first.partition:  # the interesting case: one log, two tenants
        second = await live.tenant("b")
    async with (
        connect(live.url(first.api_key, since="0")) as ws_a,
        connect(live.url(second.api_key, since="0")) as ws_b,
    ):
        a_ids = await append_logs(committer, first, 20, execution_id="a-run")
        b_ids = await append_logs(committer, second, 20, execution_id="b-run")
        got_a = [m for m in await receive(ws_a, 21) if m["type"] == "execution.log"]  # + its tenant.created
        got_b = [m for m in await receive(ws_b, 21) if m["type"] == "execution.log"]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws_a.recv(), 0.3)
    assert [m["id"] for m in got_a] == a_ids and {m["tenant_id"] for m in got_a} == {first.id}
    assert [m["id"] for m in got_b] == b_ids and {m["tenant_id"] for m in got_b} == {second.id}


async def test_200_concurrent_sockets_receive_every_event(live: LiveApi, committer: Committer) -> None:
    tenant = await live.tenant()
    sockets = [await connect(live.url(tenant.api_key)) for _ in range(200)]
    try:
        ids = await append_logs(committer, tenant, 100)
        results = await asyncio.gather(*(receive(ws, 100, timeout=30) for ws in sockets))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    for got in results:
        assert [m["id"] for m in got] == ids


async def test_each_api_process_has_its_own_reader(
    live: LiveApi, committer: Committer, feed_settings: Settings
) -> None:
    tenant = await live.tenant()
    async with serve(feed_settings) as other:
        async with connect(live.url(tenant.api_key)) as one, connect(other.url(tenant.api_key)) as two:
            ids = await append_logs(committer, tenant, 30)
            assert [m["id"] for m in await receive(one, 30)] == ids
            assert [m["id"] for m in await receive(two, 30)] == ids
        assert other.app.state.api.feed.stats.read >= 30
    assert live.app.state.api.feed.stats.read >= 30


async def test_since_before_a_trimmed_log_is_refused(live: LiveApi, committer: Committer, redis: Redis) -> None:
    tenant = await live.tenant()
    ids = await append_logs(committer, tenant, 10)
    await redis.xtrim(keys.log(tenant.partition), maxlen=5, approximate=False)
    async with connect(live.url(tenant.api_key, since=ids[2])) as ws:
        assert await closed_code(ws) == 4410
    async with connect(live.url(tenant.api_key, since=ids[6])) as ws:
        assert [m["id"] for m in await receive(ws, 3)] == ids[7:]


async def test_the_reader_idles_without_subscribers(live: LiveApi, committer: Committer) -> None:
    tenant = await live.tenant()
    hub = live.app.state.api.feed
    async with connect(live.url(tenant.api_key)) as ws:
        await append_logs(committer, tenant, 3)
        await receive(ws, 3)

    async def idle() -> bool:
        return hub.subscribers == 0 and not hub._active

    await assert_eventually(idle, timeout=10, message="reader idle")
    read = hub.stats.read
    await append_logs(committer, tenant, 5)
    await asyncio.sleep(0.3)
    assert hub.stats.read == read
    async with connect(live.url(tenant.api_key)) as ws:  # starts again from the log's end
        ids = await append_logs(committer, tenant, 2)
        assert [m["id"] for m in await receive(ws, 2)] == ids


async def test_keys_in_the_query_string_stay_out_of_the_logs(
    live: LiveApi, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await live.tenant()
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    async with connect(live.url(tenant.api_key)) as ws:
        await ws.ping()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/ws/events?token=***" in logged
    assert tenant.api_key not in logged
