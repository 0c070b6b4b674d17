"""The notifier's cache of pinned definitions has a bound: fed more distinct definitions than it holds, it stays
within it, and every notification still goes out, signed with its own workflow's secret."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from services.notifier.delivery import Deliverer
from services.notifier.service import Notifier
from shared.domain import commit_script
from shared.domain.aggregates import encode_definition
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.events import ExecutionCompleted
from shared.log.workflows import NotifyDef, StepDef, WorkflowDef
from tests.helpers import REDIS_URL, assert_eventually
from tests.notifier.support import TENANT, valid_signature, webhook_server

BOUND = 3
WORKFLOWS = 4 * BOUND


async def _end(redis: Redis, committer: Committer, p: int, n: int, hook: str) -> None:
    """Workflow ``n`` (its own definition, webhook path and secret) has one execution that just completed."""
    workflow_id, execution_id = f"{n:032d}", f"{n:031d}e"
    definition = WorkflowDef(name=f"wf {n}", steps=[StepDef(action="noop")],
                             notify=[NotifyDef(on=["completed"], webhook=f"{hook}/{n}", secret=f"secret-{n:04d}")])
    def_key = keys.workflow_version(p, workflow_id, 1)
    await redis.set(def_key, encode_definition(definition))
    await redis.hset(keys.execution(p, execution_id),
                     mapping={"tenant": TENANT, "workflow_id": workflow_id, "def_key": def_key, "status": "completed"})
    event = ExecutionCompleted(tenant_id=TENANT, aggregate_id=execution_id, ts=now_ms(), result={"n": n})
    assert isinstance(await committer.commit(Unit(p).event(event)), Applied)


async def test_more_definitions_than_the_cache_holds_still_notify_each_with_its_secret(redis: Redis) -> None:
    settings = Settings(redis_url=REDIS_URL, partitions=4, allow_private_webhooks=True, maintenance_interval_s=0)
    p = keys.partition_of(TENANT, settings.partitions)
    committer = commit_script.committer(redis)
    stop = asyncio.Event()
    with webhook_server(200) as server:
        async with httpx.AsyncClient() as client:
            notifier = Notifier(settings, redis, committer, Deliverer(settings, client), name="bounded",
                                definition_cache=BOUND)
            task = asyncio.create_task(notifier.run(stop))
            try:
                for n in range(WORKFLOWS):
                    await _end(redis, committer, p, n, server.url)

                async def all_sent() -> None:
                    assert len(server.requests) == WORKFLOWS
                    assert len(notifier._definitions) <= BOUND

                await assert_eventually(all_sent, timeout=20)
            finally:
                stop.set()
                await task
                await committer.close()
    assert len(notifier._definitions) <= BOUND
    assert sorted(r.path for r in server.requests) == sorted(f"/hook/{n}" for n in range(WORKFLOWS))
    for request in server.requests:
        n = int(request.path.rsplit("/", 1)[1])
        assert valid_signature(f"secret-{n:04d}", request), f"workflow {n} signed with its own secret"
