"""The ``tenant`` label of what happens: absent by default, per tenant with ``ORQ_METRICS_TENANT_LABEL=1``, and
bounded (past ``MAX_TENANT_LABELS`` tenants, new ones are counted as ``other``). A real executor service, read
on its metrics port with Prometheus' own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from services.executor.worker import serve
from shared.domain import commit_script
from shared.infra.settings import Settings, load_settings
from shared.log.events import ExecutionCompleted, ExecutionRetrying, StepCompleted
from shared.log.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef
from shared.service.metrics import OTHER_TENANT, Happenings, TenantLabels, configure_happenings
from tests.executor.seed import PARTITIONS, queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually, free_port

OK = WorkflowDef(name="ok", steps=[StepDef(action="noop")])
# Fails twice: one retry scheduled, then the dead-letter queue.
BAD = WorkflowDef(name="bad", steps=[StepDef(action="fail", params={"message": "no"})],
                  retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=10)))


@pytest.fixture(autouse=True)
def _default_labels_after() -> Iterator[None]:
    """The choice is per process: leave the default behind for the tests that count without a bootstrap."""
    yield
    configure_happenings(False)


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def _scrape_after(redis: Redis, settings: Settings) -> list[Sample]:
    """Run an executor service on ``settings``; tenant-a completes two runs, tenant-b one and dead-letters one."""
    committer = commit_script.committer(redis)
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    try:
        a = await seed_workflow(committer, "tenant-a", OK)
        b_ok = await seed_workflow(committer, "tenant-b", OK)
        b_bad = await seed_workflow(committer, "tenant-b", BAD)
        runs = [("tenant-a", e) for e in await queue(committer, a, OK, count=2)]
        runs += [("tenant-b", e) for e in await queue(committer, b_ok, OK)]
        [dead] = await queue(committer, b_bad, BAD)

        async def ended() -> None:
            for tenant_id, execution_id in runs:
                assert (await status(redis, tenant_id, execution_id))["status"] == "completed"
            assert (await status(redis, "tenant-b", dead)).get("dead_lettered") == "1"

        await assert_eventually(ended, timeout=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.metrics_port}") as client:
            reply = await client.get("/metrics")
        assert reply.status_code == 200
        return _samples(reply.text)
    finally:
        stop.set()
        await service
        await committer.close()


async def test_no_tenant_label_by_default(redis: Redis) -> None:
    env = {"ORQ_REDIS_URL": REDIS_URL, "ORQ_PARTITIONS": str(PARTITIONS), "ORQ_METRICS_PORT": str(free_port())}
    settings = load_settings(env)
    assert not settings.metrics_tenant_label
    samples = await _scrape_after(redis, settings)
    assert _value(samples, "orq_executions_total", outcome="completed") >= 3
    assert not [s for s in samples if "tenant" in s.labels]
    # Exactly today's label sets: outcome alone, and no labels at all on retries and execution durations.
    assert {tuple(sorted(s.labels)) for s in samples if s.name == "orq_executions_total"} == {("outcome",)}
    assert {tuple(sorted(s.labels)) for s in samples if s.name == "orq_retries_total"} == {()}


async def test_tenant_label_counts_each_tenant_apart(redis: Redis) -> None:
    env = {"ORQ_REDIS_URL": REDIS_URL, "ORQ_PARTITIONS": str(PARTITIONS), "ORQ_METRICS_PORT": str(free_port()),
           "ORQ_METRICS_TENANT_LABEL": "1"}
    settings = load_settings(env)
    assert settings.metrics_tenant_label
    samples = await _scrape_after(redis, settings)
    assert _value(samples, "orq_executions_total", outcome="completed", tenant="tenant-a") == 2
    assert _value(samples, "orq_executions_total", outcome="completed", tenant="tenant-b") == 1
    assert _value(samples, "orq_executions_total", outcome="dead_lettered", tenant="tenant-b") == 1
    assert _value(samples, "orq_executions_total", outcome="dead_lettered", tenant="tenant-a") == 0
    assert _value(samples, "orq_dead_letters_total", reason="exhausted", tenant="tenant-b") == 1
    assert _value(samples, "orq_retries_total", tenant="tenant-b") == 1
    assert _value(samples, "orq_steps_total", outcome="completed", tenant="tenant-a") == 2
    assert _value(samples, "orq_steps_total", outcome="failed", tenant="tenant-b") == 2
    assert _value(samples, "orq_execution_duration_seconds_count", tenant="tenant-a") == 2
    assert _value(samples, "orq_step_duration_seconds_count", outcome="completed", tenant="tenant-b") == 1
    # The families the brief leaves unlabelled stay so: queue wait carries no tenant.
    assert not [s for s in samples if s.name.startswith("orq_execution_queue_wait") and "tenant" in s.labels]


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(limit=2)
    assert [labels(t) for t in ("t1", "t2", "t3", "t1", "t4", "t2")] == ["t1", "t2", OTHER_TENANT, "t1",
                                                                         OTHER_TENANT, "t2"]


def test_past_the_bound_new_tenants_are_counted_as_other() -> None:
    happenings = Happenings(tenant_label=True, max_tenants=2)
    for tenant_id in ("t1", "t2", "t3", "t4", "t1"):
        happenings.observe_event(ExecutionCompleted(tenant_id=tenant_id, aggregate_id="e", ts=0, duration_ms=5))
        happenings.observe_event(StepCompleted(tenant_id=tenant_id, aggregate_id="e", ts=0, step_index=0))
        happenings.observe_event(ExecutionRetrying(tenant_id=tenant_id, aggregate_id="e", ts=0, failed_attempt=1,
                                                   next_attempt=2, delay_ms=10, error="no"))
    samples = [s for family in happenings.registry.collect() for s in family.samples]
    completed = {s.labels["tenant"]: s.value for s in samples
                 if s.name == "orq_executions_total" and s.labels["outcome"] == "completed"}
    assert completed == {"t1": 2, "t2": 1, OTHER_TENANT: 2}
    assert {s.labels["tenant"] for s in samples if s.name == "orq_retries_total"} == {"t1", "t2", OTHER_TENANT}
    assert {s.labels["tenant"] for s in samples if s.name == "orq_step_duration_seconds_count"} == {
        "t1", "t2", OTHER_TENANT}


def test_the_same_choice_again_keeps_the_counts() -> None:
    first = configure_happenings(True)
    assert configure_happenings(True) is first  # several services of `orq dev` in one process
    assert configure_happenings(False) is not first
