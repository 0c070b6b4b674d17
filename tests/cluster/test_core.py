"""The core suites on a Redis Cluster, black-box: real ``orq`` processes driven through HTTP and the WebSocket.

One deployment for the module (api, 2 executors, projector, trigger) with ``ORQ_REDIS_CLUSTER=1`` on the shared
local cluster and a SQLite projection; each test makes its own tenant, so the tests do not see each other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from shared.infra.plans import default_plans
from shared.log.events import Event, ExecutionCompleted, ExecutionFailed, ExecutionStarted
from shared.readmodel.db import create_engine
from shared.readmodel.schema import executions
from tests.cluster.conftest import cluster_client
from tests.cluster.harness import LocalCluster
from tests.drills.fleet import ADMIN_TOKEN, Fleet, drill_env, fleet
from tests.drills.ledger import histories
from tests.e2e.test_pipeline import create_workflow, execute, wait_for
from tests.executor.seed import PARTITIONS
from tests.helpers import assert_eventually, free_port
from tests.projector.factories import snapshot
from tests.projector.helpers import caught_up

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# A plan of one running execution at a time: with one slot, what runs next is decided by priority alone.
SOLO = {"monthly_quota": 0, "rate_per_minute": 1000, "max_concurrent": 1, "default_priority": 5, "min_priority": 1}
TRIAL_CONCURRENT = default_plans()["trial"].max_concurrent


@dataclass
class Core:
    """The module's deployment: its processes, its API, its database and a cluster client for reading the log."""

    crew: Fleet
    base_url: str
    database_url: str
    redis: Redis
    engine: AsyncEngine

    async def tenant(self, plan: str = "enterprise") -> httpx.AsyncClient:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            created = await admin.post("/api/tenants", json={"name": f"{plan}-tenant", "plan": plan})
        assert created.status_code == 201, created.text
        return httpx.AsyncClient(base_url=self.base_url, timeout=15,
                                 headers={"Authorization": f"Bearer {created.json()['api_key']}"})


def _plans_file(folder: Path) -> Path:
    """The default plans plus ``solo`` (ORQ_PLANS_FILE replaces the whole set)."""
    plans: dict[str, dict[str, Any]] = {}
    for name, plan in default_plans().items():
        fields = msgspec.to_builtins(plan)
        del fields["name"]
        plans[name] = fields
    plans["solo"] = SOLO
    path = folder / "plans.json"
    path.write_text(json.dumps(plans))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def core(cluster: LocalCluster, cluster_keys: None, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Core]:
    tmp = tmp_path_factory.mktemp("core")
    database_url = f"sqlite+aiosqlite:///{tmp / 'orq.db'}"
    env = drill_env(cluster.seed_url, ORQ_REDIS_CLUSTER="1", ORQ_DATABASE_URL=database_url,
                    ORQ_PLANS_FILE=str(_plans_file(tmp)), ORQ_LEASE_SECONDS="5", ORQ_EXECUTOR_CONCURRENCY="5",
                    ORQ_SHUTDOWN_GRACE_SECONDS="1", ORQ_SMTP_PORT=str(free_port()))
    redis = cluster_client(cluster.seed_url)
    engine = create_engine(database_url)
    try:
        with fleet(env, tmp) as crew:
            base_url = await crew.api("api")
            await crew.executor("executor-0")
            await crew.executor("executor-1")
            await crew.projector("projector-0")
            await crew.ready(crew.start("trigger", "trigger"), "SMTP listener on")
            yield Core(crew, base_url, database_url, redis, engine)
    finally:
        await engine.dispose()
        await redis.aclose()


# --- HTTP helpers --------------------------------------------------------------------------------------------


async def execute_bulk(client: httpx.AsyncClient, workflow_id: str, runs: Sequence[dict[str, Any]]) -> list[str]:
    response = await client.post(f"/api/workflows/{workflow_id}/execute/bulk", json={"runs": list(runs)})
    assert response.status_code == 202, response.text
    return [str(i) for i in response.json()["execution_ids"]]


async def wait_all(client: httpx.AsyncClient, ids: Sequence[str], status: str, timeout: float = 30) -> None:
    for execution_id in ids:
        await wait_for(client, execution_id, status, timeout=timeout)


# --- the suites ----------------------------------------------------------------------------------------------


async def test_execute_to_completed_with_its_projected_row(core: Core) -> None:
    async with await core.tenant() as client:
        workflow_id = await create_workflow(client, {"name": "invoice", "steps": [
            {"action": "set", "label": "read", "params": {"values": {"total": "{{ params.total }}"}}},
            {"action": "log", "label": "report", "params": {"message": "total {{ steps.0.output.total }}"}},
        ]})
        execution_id = await execute(client, workflow_id, params={"total": 42})
        body = await wait_for(client, execution_id, "completed")
    assert body["steps_completed"] == 2 and body["steps"][0]["output_data"] == {"total": 42}
    async with core.engine.connect() as conn:
        row = (await conn.execute(select(executions).where(executions.c.id == execution_id))).mappings().one()
    assert row["status"] == "completed" and row["workflow_id"] == workflow_id


async def test_higher_priority_runs_first_when_one_slot_is_free(core: Core) -> None:
    async with await core.tenant("solo") as client:
        blocker_wf = await create_workflow(client, {"name": "blocker", "steps": [
            {"action": "delay", "params": {"ms": 1500}}]})
        short_wf = await create_workflow(client, {"name": "short", "steps": [{"action": "noop"}]})
        blocker = await execute(client, blocker_wf)
        await wait_for(client, blocker, "running")
        # Queued while the tenant's only slot is taken: low ones first, so arrival order cannot explain the result.
        low = await execute_bulk(client, short_wf, [{"priority": 9}] * 3)
        high = await execute_bulk(client, short_wf, [{"priority": 1}] * 3)
        await wait_all(client, [blocker, *low, *high], "completed")
    found = await histories(core.redis, [*low, *high])
    order = sorted(found, key=lambda i: _stream_order(_first_start(found[i])))
    assert set(order[:3]) == set(high), f"start order {order}, high priority {high}"


async def test_a_tenant_never_runs_more_than_its_plan_allows(core: Core) -> None:
    async with await core.tenant("trial") as client:
        workflow_id = await create_workflow(client, {"name": "slowish", "steps": [
            {"action": "delay", "params": {"ms": 300}}]})
        ids = await execute_bulk(client, workflow_id, [{}] * 6)
        await wait_all(client, ids, "completed")
    found = await histories(core.redis, ids)
    # The partition's log is one total order: replaying starts and ends gives the exact concurrency over time.
    marks = sorted((_stream_order(e.id), +1 if isinstance(e, ExecutionStarted) else -1)
                   for events in found.values() for e in events
                   if isinstance(e, ExecutionStarted | ExecutionCompleted | ExecutionFailed))
    running = peak = 0
    for _, change in marks:
        running += change
        peak = max(peak, running)
    assert peak == TRIAL_CONCURRENT, f"at most {TRIAL_CONCURRENT} at a time, and that many used: peak {peak}"


async def test_failing_step_retries_then_dead_letters_and_dlq_retry_runs_again(core: Core) -> None:
    async with await core.tenant() as client:
        workflow_id = await create_workflow(client, {
            "name": "doomed", "steps": [{"action": "fail", "params": {"message": "no such invoice"}}],
            "retry": {"attempts": 2, "backoff": {"type": "exponential", "delay_ms": 200}},
        })
        execution_id = await execute(client, workflow_id)
        body = await wait_for(client, execution_id, "failed", dead_lettered=True)
        assert body["retry_count"] == 1 and body["error_message"] == "no such invoice"
        dlq = (await client.get("/api/dlq")).json()
        assert [item["id"] for item in dlq["items"]] == [execution_id]
        retried = await client.post(f"/api/dlq/{execution_id}/retry")
        assert retried.status_code == 202, retried.text

        async def dead_again() -> None:
            body = (await client.get(f"/api/executions/{execution_id}")).json()
            assert body["status"] == "failed" and body["dead_lettered"] and body["retry_count"] >= 2, body
            assert [i["id"] for i in (await client.get("/api/dlq")).json()["items"]] == [execution_id]

        await assert_eventually(dead_again, timeout=30, interval=0.2, message="a new series, dead-lettered again")


async def test_a_chain_trigger_fires_once(core: Core) -> None:
    async with await core.tenant() as client:
        first = await create_workflow(client, {"name": "first", "steps": [
            {"action": "set", "params": {"values": {"invoice": 7}}}]})
        second = await create_workflow(client, {"name": "second", "steps": [{"action": "noop"}]})
        created = await client.post("/api/triggers", json={"workflow_id": second, "trigger_type": "workflow_completed",
                                                           "config": {"workflow_id": first}})
        assert created.status_code == 201, created.text
        await wait_for(client, await execute(client, first), "completed")

        async def chained() -> str:
            listed = (await client.get("/api/executions", params={"workflow_id": second})).json()["items"]
            assert len(listed) == 1, listed
            assert listed[0]["status"] == "completed", listed[0]
            return str(listed[0]["id"])

        chained_id = await assert_eventually(chained, timeout=30, interval=0.2, message="the chained run completed")
        triggers = (await client.get("/api/triggers")).json()["items"]
        assert [t["trigger_count"] for t in triggers] == [1]
        assert (await client.get(f"/api/executions/{chained_id}")).json()["trigger_type"] == "workflow_completed"
        listed = (await client.get("/api/executions", params={"workflow_id": second})).json()["items"]
        assert [i["id"] for i in listed] == [chained_id], "fired once"


async def test_the_websocket_feed_shows_an_executions_events(core: Core) -> None:
    async with await core.tenant() as client:
        workflow_id = await create_workflow(client, {"name": "watched", "steps": [
            {"action": "log", "params": {"message": "hello"}}, {"action": "noop"}]})
        execution_id = await execute(client, workflow_id)
        await wait_for(client, execution_id, "completed")
        key = client.headers["Authorization"].removeprefix("Bearer ")
        ws_url = core.base_url.replace("http", "ws", 1) + "/ws/events"
        async with connect(f"{ws_url}?token={key}&since=0&execution_id={execution_id}") as ws:
            types: list[str] = []
            while "execution.completed" not in types:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert message["aggregate_id"] == execution_id
                types.append(message["type"])
    assert types[0] == "execution.queued" and "execution.started" in types and "execution.log" in types
    assert types.count("step.completed") == 2 and types[-1] == "execution.completed"


async def test_replay_rebuilds_the_same_rows(core: Core) -> None:
    """Last in the module: the projector stops for the replay (a live one holds the partitions)."""
    async with await core.tenant() as client:
        workflow_id = await create_workflow(client, {"name": "replayed", "steps": [{"action": "noop"}]})
        await wait_all(client, await execute_bulk(client, workflow_id, [{}] * 5), "completed")
    await caught_up(core.redis, core.engine, PARTITIONS, timeout=30)
    [projector] = [p for p in core.crew.started if p.log_path.stem.startswith("projector")]
    assert projector.terminate() == 0, projector.output()
    before = await snapshot(core.engine)
    replay = core.crew.start("replay", "replay", "--no-progress")
    assert await asyncio.to_thread(replay.process.wait, 60) == 0, replay.output()
    assert await snapshot(core.engine) == before


# --- helpers ---------------------------------------------------------------------------------------------------


def _first_start(events: Sequence[Event]) -> str:
    """The stream id of the execution's first ``execution.started``."""
    return next(str(e.id) for e in events if isinstance(e, ExecutionStarted))


def _stream_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)
