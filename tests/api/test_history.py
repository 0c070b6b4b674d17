"""An execution's history: ``GET /api/executions/{id}/events``, ``…/logs`` and ``GET /api/executions/{id}?as_of=``,
on the real executor and projector (SQLite and MariaDB), with events both archived and still in the log's tail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import msgspec
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.feed import Subscription, replay
from services.api.routes.history import render
from services.projector.store import CHECKPOINT_NAME
from shared.infra.clock import now_ms, stream_id_parts
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from shared.log.consumer import records_of
from shared.log.events import Event, decode, type_of
from shared.log.redis import Entries
from shared.readmodel import history
from shared.readmodel.projection import Projection
from shared.readmodel.schema import event_archive, execution_logs
from tests.api.support import TenantHandle, create_workflow, execute, execution_state, executor, projector
from tests.feed.support import append_logs
from tests.helpers import assert_eventually

# Fails its second step on the first attempt, then resumes from it: the history holds a retry.
FLAKY: dict[str, Any] = {
    "name": "flaky",
    "steps": [
        {"action": "log", "label": "hello", "params": {"message": "starting {{ params.x }}"}},
        {"action": "fail", "params": {"message": "not yet", "until_attempt": 2}},
        {"action": "set", "params": {"values": {"ok": True}}},
        {"action": "log", "params": {"message": "done"}},
    ],
    "retry": {"attempts": 3, "backoff": {"type": "fixed", "delay_ms": 50}},
}
CUTS = 25  # hypothesis examples per property


async def feed_messages(redis: Redis, tenant: TenantHandle, execution_id: str) -> list[dict[str, Any]]:
    """What the WebSocket feed sends for the execution (``?execution_id=…&since=0``): its own replay."""
    sub = Subscription(tenant.id, tenant.partition, execution_id)
    last = cast(Entries, await redis.xrevrange(keys.log(tenant.partition), count=1))[0][0].decode()
    return [json.loads(message) async for page in replay(redis, sub, "0-0", last) for _, _, message in page]


async def logged_events(redis: Redis, tenant: TenantHandle, execution_id: str) -> list[Event]:
    """The execution's events, decoded from the log (nothing is trimmed in these tests)."""
    records = records_of(cast(Entries, await redis.xrange(keys.log(tenant.partition))))
    events = [decode(r.body, r.id) for r in records]
    return [e for e in events if e.aggregate_id == execution_id and e.tenant_id == tenant.id]


async def all_pages(client: httpx.AsyncClient, url: str, tenant: TenantHandle, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await client.get(url, params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def expected_detail(events: list[Event], execution_id: str) -> dict[str, Any] | None:
    """The detail body a fold of ``events`` gives (None: the execution was not queued yet)."""
    projection = Projection()
    projection.apply_all(events)
    folded = history.rows_of(projection, execution_id)
    if folded.execution is None:
        return None
    return cast(dict[str, Any], msgspec.to_builtins(render(folded.execution, folded.steps)))


def check_with_hypothesis(strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]]) -> Awaitable[None]:
    """Run ``check`` (a coroutine on this loop, which serves the app) for values hypothesis picks, from a thread."""
    loop = asyncio.get_running_loop()

    @given(value=strategy)
    @hypothesis_settings(max_examples=CUTS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def prop(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(30)

    return asyncio.to_thread(prop)


async def run_flaky(client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle) -> str:
    """Run FLAKY to completion, projected."""
    workflow = await create_workflow(client, tenant, FLAKY)
    execution_id = await execute(client, tenant, workflow["id"], params={"x": 7})
    async with projector(settings), executor(settings):

        async def completed() -> None:
            r = await client.get(f"/api/executions/{execution_id}", headers=tenant.headers)
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text

        await assert_eventually(completed, timeout=30, message="the flaky run completes and is projected")
    return execution_id


async def test_events_and_logs_of_a_run_with_a_retry(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, settings: Settings, tenant: TenantHandle,
    other_tenant: TenantHandle,
) -> None:
    execution_id = await run_flaky(client, settings, tenant)
    url = f"/api/executions/{execution_id}"

    events = await all_pages(client, f"{url}/events", tenant, limit=100)
    assert events == await feed_messages(redis, tenant, execution_id)
    types = [e["type"] for e in events]
    assert types[0] == "execution.queued" and types[-1] == "execution.completed"
    assert "execution.retrying" in types and types.count("execution.started") == 2
    assert [stream_id_parts(e["id"]) for e in events] == sorted(stream_id_parts(e["id"]) for e in events)
    async with engine.connect() as conn:  # served from the archive: the projector had it all
        archived = (await conn.execute(
            select(func.count()).select_from(event_archive).where(event_archive.c.aggregate_id == execution_id)
        )).scalar_one()
    assert archived == len(events)

    # any page size gives the same sequence, without gaps or repeats
    for limit in (1, 2, 5):
        assert await all_pages(client, f"{url}/events", tenant, limit=limit) == events

    logs = await all_pages(client, f"{url}/logs", tenant, limit=1)
    assert [line["message"] for line in logs] == ["starting 7", "done"]
    assert [set(line) for line in logs] == [{"event_id", "ts", "step_index", "level", "message"}] * 2
    assert [line["step_index"] for line in logs] == [0, 3] and {line["level"] for line in logs} == {"info"}
    assert [line["event_id"] for line in logs] == [e["id"] for e in events if e["type"] == "execution.log"]
    async with engine.connect() as conn:  # the same lines as the projection's execution_logs rows
        rows = (await conn.execute(
            select(execution_logs.c.event_id, execution_logs.c.ts, execution_logs.c.step_index,
                   execution_logs.c.level, execution_logs.c.message)
            .where(execution_logs.c.execution_id == execution_id)
        )).all()
    assert sorted(dict(r._mapping).items() for r in rows) == sorted(line.items() for line in logs)

    # another tenant's (and an unknown) execution is a 404, whatever the query
    for path in (f"{url}/events", f"{url}/logs", url):
        for params in ({}, {"as_of": events[-1]["id"]}, {"cursor": "garbage"}):
            r = await client.get(path, params=params, headers=other_tenant.headers)
            assert r.status_code == 404, (path, params, r.text)
            assert r.json()["error"]["code"] == "not_found"
    for path in ("/api/executions/nope/events", "/api/executions/nope/logs"):
        assert (await client.get(path, headers=tenant.headers)).status_code == 404

    # bad page parameters are a 422 naming the parameter
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"cursor": "garbage"}, {"cursor": "WzEsIngiXQ"}):
        r = await client.get(f"{url}/events", params=params, headers=tenant.headers)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["field"] in params
    r = await client.get(f"{url}/events", params={"limit": 1000}, headers=tenant.headers)
    assert r.status_code == 200 and r.json() == {"items": events, "next_cursor": None}


async def test_as_of_each_event_is_the_fold_up_to_it(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    execution_id = await run_flaky(client, settings, tenant)
    url = f"/api/executions/{execution_id}"
    events = await logged_events(redis, tenant, execution_id)
    live = (await client.get(url, headers=tenant.headers)).json()

    async def at_event(i: int) -> None:
        r = await client.get(url, params={"as_of": events[i].id}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json() == expected_detail(events[: i + 1], execution_id)
        assert r.json()["status"] == {
            "execution.queued": "queued", "execution.retrying": "retrying", "execution.completed": "completed",
        }.get(type_of(events[i]), r.json()["status"])

    await check_with_hypothesis(st.integers(0, len(events) - 1), at_event)
    # the last event's state is what the live projection holds
    r = await client.get(url, params={"as_of": events[-1].id}, headers=tenant.headers)
    assert r.json() == live
    retrying = next(i for i, e in enumerate(events) if type_of(e) == "execution.retrying")
    r = await client.get(url, params={"as_of": events[retrying].id}, headers=tenant.headers)
    assert r.json()["retry_count"] == 1 and r.json()["steps"][1]["status"] == "failed"
    assert r.json()["steps"][0]["status"] == "completed" and r.json()["steps"][2]["status"] == "pending"

    # ISO-8601 times: everything appended up to that millisecond (of the log's clock)
    first_ms, last_ms = stream_id_parts(events[0].id)[0], stream_id_parts(events[-1].id)[0]

    async def at_time(ms: int) -> None:
        when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        r = await client.get(url, params={"as_of": when}, headers=tenant.headers)
        expected = expected_detail([e for e in events if stream_id_parts(e.id)[0] <= ms], execution_id)
        if expected is None:
            assert r.status_code == 404, r.text
        else:
            assert r.status_code == 200 and r.json() == expected, r.text

    await check_with_hypothesis(st.integers(first_ms - 5, last_ms + 5), at_time)
    for late in ("2999-01-01T00:00:00Z", "2999-01-01T00:00:00", "2999-01-01"):
        r = await client.get(url, params={"as_of": late}, headers=tenant.headers)
        assert r.status_code == 200 and r.json() == live, late

    # before the run, it did not exist yet; a malformed point is a 422
    ms, seq = stream_id_parts(events[0].id)
    before = f"{ms}-{seq - 1}" if seq else str(ms - 1)
    for point in (before, "1", "2001-09-09T01:46:40Z", "1969-12-31T23:59:59Z"):
        r = await client.get(url, params={"as_of": point}, headers=tenant.headers)
        assert r.status_code == 404, (point, r.text)
    for bad in ("", "yesterday", "12-ab", "1-2-3", "2026-13-01", "9" * 30, "2026-01-01T00:00:00Z" * 5):
        r = await client.get(url, params={"as_of": bad}, headers=tenant.headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["field"] == "as_of" and "ISO-8601" in r.json()["error"]["message"]


async def test_history_spans_the_archive_and_the_unprojected_tail(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, settings: Settings, tenant: TenantHandle,
    committer: Committer,
) -> None:
    workflow = await create_workflow(client, tenant, FLAKY)
    execution_id = await execute(client, tenant, workflow["id"], params={"x": 1})
    url = f"/api/executions/{execution_id}"
    async with projector(settings):  # the projector archives the queued event, then stops

        async def projected() -> None:
            assert (await client.get(url, headers=tenant.headers)).status_code == 200

        await assert_eventually(projected, timeout=15, message="the queued event is projected")
    async with executor(settings):  # the run happens while nothing projects it

        async def completed() -> None:
            assert (await execution_state(redis, tenant, execution_id)).get("status") == "completed"

        await assert_eventually(completed, timeout=30, message="the run completes")
    # interleave another execution's events and more lines of this one in the tail
    await append_logs(committer, tenant, 3, execution_id="someone-else")
    await append_logs(committer, tenant, 2, execution_id=execution_id, start=100)
    await append_logs(committer, tenant, 3, execution_id="someone-else")

    async with engine.connect() as conn:
        archived = (await conn.execute(
            select(func.count()).select_from(event_archive).where(event_archive.c.aggregate_id == execution_id)
        )).scalar_one()
    events = await all_pages(client, f"{url}/events", tenant, limit=3)
    assert 1 <= archived < len(events)  # some from the archive, the rest from the log
    assert events == await feed_messages(redis, tenant, execution_id)
    assert events[-1]["type"] == "execution.log" and events[-1]["data"]["message"] == "101"
    logs = await all_pages(client, f"{url}/logs", tenant, limit=2)
    assert [line["message"] for line in logs] == ["starting 1", "done", "100", "101"]

    # the SQL row still says queued; as_of folds the tail too
    assert (await client.get(url, headers=tenant.headers)).json()["status"] == "queued"
    decoded = await logged_events(redis, tenant, execution_id)
    r = await client.get(url, params={"as_of": decoded[-1].id}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert r.json() == expected_detail(decoded, execution_id)

    # once projected, the same history comes from the archive alone
    async with projector(settings):

        async def caught_up() -> None:
            r = await client.get(url, headers=tenant.headers)
            assert r.json()["status"] == "completed"

        await assert_eventually(caught_up, timeout=15, message="the projector catches up")
    assert await all_pages(client, f"{url}/events", tenant, limit=4) == events


async def test_a_page_scans_a_bounded_part_of_the_tail(
    redis: Redis, engine: AsyncEngine, committer: Committer, tenant: TenantHandle
) -> None:
    """A long tail of other executions' events: pages come back short (even empty) with a cursor, never a
    gap or a repeat."""
    mine: list[str] = []
    for round_ in range(5):
        await append_logs(committer, tenant, 7, execution_id="noise", start=round_ * 10)
        mine += await append_logs(committer, tenant, 1, execution_id="mine", start=round_)
    span = history.Span(tenant.id, tenant.partition, "mine")
    seen: list[str] = []
    pages = 0
    while True:
        page = await history.read_page(redis, engine, span, 2, tail_scan=3)
        assert len(page.events) <= 2
        seen += [e.id for e in page.events]
        pages += 1
        if page.next is None:
            break
        span = history.Span(tenant.id, tenant.partition, "mine", after=page.next)
    assert seen == mine
    assert pages >= 40 // 3  # each call read at most 3 entries of the 40


def test_the_checkpoint_read_is_the_projectors() -> None:
    assert history.CHECKPOINT_NAME == CHECKPOINT_NAME


async def test_history_of_a_run_not_yet_started(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    """Nothing projected yet: the queued event comes from the log alone."""
    workflow = await create_workflow(client, tenant, FLAKY)
    execution_id = await execute(client, tenant, workflow["id"])
    r = await client.get(f"/api/executions/{execution_id}/events", headers=tenant.headers)
    assert r.status_code == 200
    assert [e["type"] for e in r.json()["items"]] == ["execution.queued"] and r.json()["next_cursor"] is None
    assert r.json()["items"] == await feed_messages(redis, tenant, execution_id)
    r = await client.get(f"/api/executions/{execution_id}/logs", headers=tenant.headers)
    assert r.json() == {"items": [], "next_cursor": None}
    r = await client.get(f"/api/executions/{execution_id}", params={"as_of": str(now_ms() + 1000)},
                         headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["steps_total"] == 4
