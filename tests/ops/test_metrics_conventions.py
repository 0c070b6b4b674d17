"""``/metrics`` the way Prometheus users expect: an executor's metrics port, read with the official parser after
a few executions, shows the counters and histograms of what happened; the shipped alert rules and dashboard
only use names the code exports."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from services.executor.worker import serve
from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef
from tests.executor.seed import PARTITIONS, queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OK = WorkflowDef(name="ok", steps=[StepDef(action="noop"), StepDef(action="noop")])
# Fails twice: one retry scheduled, then the dead-letter queue.
BAD = WorkflowDef(name="bad", steps=[StepDef(action="fail", params={"message": "no"})],
                  retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=10)))


def _samples(text: str) -> dict[str, list[Sample]]:
    """Every sample of the exposition by sample name (``x_total``, ``x_bucket``, plain gauges)."""
    found: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def _exported(text: str) -> set[str]:
    """The names a query may use: every family's samples, a labelled counter's ``_total`` even before its
    first increment (``prometheus_client`` writes no sample then)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(orq_[a-z0-9_]+)", expr))


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def _scrape_after_executions(redis: Redis) -> str:
    """Run a real executor service (its metrics port on), let three executions end, and scrape it."""
    committer = commit_script.committer(redis)
    port = free_port()
    settings = replace(Settings(redis_url=REDIS_URL, partitions=PARTITIONS), metrics_port=port)
    stop = asyncio.Event()
    service = asyncio.create_task(serve(settings, stop))
    try:
        ok = await seed_workflow(committer, "tenant-ok", OK)
        bad = await seed_workflow(committer, "tenant-bad", BAD)
        done = await queue(committer, ok, OK, count=2)
        [dead] = await queue(committer, bad, BAD)

        async def ended() -> None:
            for execution_id in done:
                assert (await status(redis, "tenant-ok", execution_id))["status"] == "completed"
            assert (await status(redis, "tenant-bad", dead)).get("dead_lettered") == "1"

        await assert_eventually(ended, timeout=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            reply = await client.get("/metrics")
        assert reply.status_code == 200
        return reply.text
    finally:
        stop.set()
        await service
        await committer.close()


async def test_an_executors_metrics_show_what_happened(redis: Redis) -> None:
    text = await _scrape_after_executions(redis)
    samples = _samples(text)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["orq_executions"] == "counter" and types["orq_execution_duration_seconds"] == "histogram"
    assert _value(samples, "orq_executions_total", outcome="completed") >= 2
    assert _value(samples, "orq_executions_total", outcome="dead_lettered") >= 1
    assert _value(samples, "orq_dead_letters_total", reason="exhausted") >= 1
    assert _value(samples, "orq_retries_total") >= 1
    assert _value(samples, "orq_steps_total", outcome="completed") >= 4
    assert _value(samples, "orq_steps_total", outcome="failed") >= 2
    assert _value(samples, "orq_execution_duration_seconds_count") >= 2
    assert _value(samples, "orq_execution_duration_seconds_bucket", le="+Inf") >= 2
    assert _value(samples, "orq_step_duration_seconds_count", outcome="completed") >= 4
    assert _value(samples, "orq_execution_queue_wait_seconds_count") >= 3  # each one's first start
    assert _value(samples, "orq_executor_slots") > 0  # levels stay gauges
    # Bounded labels: no tenant or execution id on anything this process counts.
    assert not any("tenant" in s.labels or "execution_id" in s.labels for group in samples.values() for s in group)


async def test_alert_rules_and_dashboard_use_only_exported_names(redis: Redis) -> None:
    exported = _exported(await _scrape_after_executions(redis))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"OrqDeadLettersGrowing", "OrqConsumerLagHigh", "OrqExecutorSlotsSaturated",
            "OrqWebhookRefusalsSpiking"} <= alerts
    used = set().union(*(_names_in(str(e)) for e in exprs))
    assert used and used <= exported, used - exported
    dashboard = json.loads((DEPLOY / "grafana" / "orquesta.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    # The dashboard also reads the API's projection gauges (orq_queue_depth), exported by the API only.
    shown = set().union(*(_names_in(q) for q in queries)) - {"orq_queue_depth"}
    assert shown and shown <= exported, shown - exported
