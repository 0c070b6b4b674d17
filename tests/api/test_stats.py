"""``GET /api/stats`` and ``GET /metrics``: figures from the projection (filled by the real projector) and
from Redis; the pure summary with an explicit ``now``."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from services.api.metrics import MINUTE_MS, percentile, summarize
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.events import ExecutionCompleted, ExecutionStarted, StepCompleted
from tests.api.support import TenantHandle, create_workflow, mark_failed, mark_running, projector
from tests.helpers import assert_eventually

NOW = 1_800_000_000_000 + 30_000  # half a minute into a minute


# --- the pure summary --------------------------------------------------------------------------------------------


def test_summary_buckets_window_and_percentiles() -> None:
    finished = [
        ("completed", NOW - 1_000, 100),  # this minute
        ("completed", NOW - 61_000, 300),  # the minute before
        ("failed", NOW - 61_500, None),
        ("completed", NOW + 5_000, 200),  # an executor clock a little ahead: counted as now
        ("completed", NOW - 15 * MINUTE_MS - 1, 9_999),  # just outside the rolling window
    ]
    f = summarize([("queued", 2), ("running", 1), ("bogus", 7)], 1, [(3, 2)], finished, NOW)
    assert f.counts == {"queued": 2, "running": 1, "retrying": 0, "completed": 0, "failed": 0, "cancelled": 0,
                        "dead_lettered": 1}
    assert f.depth == {**{p: 0 for p in range(1, 11)}, 3: 2}
    assert len(f.buckets) == 15 and f.buckets[-1].start == (NOW // MINUTE_MS) * MINUTE_MS
    assert (f.buckets[-1].completed, f.buckets[-1].failed) == (2, 0)
    assert (f.buckets[-2].completed, f.buckets[-2].failed) == (1, 1)
    assert sum(b.completed for b in f.buckets) == 3  # the oldest run's minute is before the first bucket
    assert f.throughput_per_minute == pytest.approx(4 / 15)
    assert f.avg_duration_ms == pytest.approx(200)
    assert f.p95_duration_ms == 300
    assert f.error_rate == pytest.approx(1 / 4)


def test_summary_of_nothing() -> None:
    f = summarize([], 0, [], [], NOW)
    assert set(f.counts.values()) == {0}
    assert f.avg_duration_ms is None and f.p95_duration_ms is None and f.error_rate is None
    assert f.throughput_per_minute == 0 and all(b.completed == b.failed == 0 for b in f.buckets)


@pytest.mark.parametrize(("values", "p95"), [([5], 5), (list(range(1, 101)), 95), (list(range(1, 21)), 19)])
def test_percentile_is_nearest_rank(values: list[int], p95: int) -> None:
    assert percentile(values, 0.95) == p95


# --- through the API ---------------------------------------------------------------------------------------------


async def _execute(client: httpx.AsyncClient, tenant: TenantHandle, workflow_id: str, priority: int) -> str:
    r = await client.post(f"/api/workflows/{workflow_id}/execute", json={"priority": priority},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    execution_id: str = r.json()["execution_id"]
    return execution_id


async def _complete(committer: Committer, tenant: TenantHandle, execution_id: str, ts: int, duration: int) -> None:
    """Started and completed at ``ts`` taking ``duration`` ms, as the executor reports it."""
    unit = Unit(tenant.partition)
    common: dict[str, Any] = {"tenant_id": tenant.id, "aggregate_id": execution_id}
    unit.event(ExecutionStarted(**common, ts=ts - duration, attempt=1, executor="test"))
    unit.event(StepCompleted(**common, ts=ts, step_index=0, duration_ms=duration))
    unit.event(ExecutionCompleted(**common, ts=ts, duration_ms=duration))
    unit.hset(keys.execution(tenant.partition, execution_id), {"status": "completed"})
    assert isinstance(await committer.commit(unit), Applied)


async def _stats(client: httpx.AsyncClient, tenant: TenantHandle) -> dict[str, Any]:
    r = await client.get("/api/stats", headers=tenant.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _sample(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label_text + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no sample {name}{labels} in:\n{text}"
    return float(match.group(1))


@pytest.fixture
async def busy(
    client: httpx.AsyncClient, tenant: TenantHandle, committer: Committer, settings: Settings
) -> dict[str, str]:
    """Six runs of the tenant: two queued (priorities 3 and 7), one running, two completed, one dead-lettered."""
    workflow = await create_workflow(client, tenant)
    ids = {name: await _execute(client, tenant, workflow["id"], prio)
           for name, prio in [("q3", 3), ("q7", 7), ("run", 5), ("ok1", 5), ("ok2", 5), ("dead", 5)]}
    now = now_ms()
    await mark_running(committer, tenant, ids["run"])
    await _complete(committer, tenant, ids["ok1"], now - 2 * MINUTE_MS, 100)
    await _complete(committer, tenant, ids["ok2"], now, 300)
    await mark_running(committer, tenant, ids["dead"])
    await mark_failed(committer, tenant, ids["dead"], dead_letter=True)
    return ids


async def test_stats_of_a_tenant(
    client: httpx.AsyncClient, tenant: TenantHandle, other_tenant: TenantHandle, busy: dict[str, str],
    settings: Settings, redis: Redis,
) -> None:
    async with projector(settings):

        async def projected() -> dict[str, Any]:
            body = await _stats(client, tenant)
            assert body["counts"]["completed"] == 2 and body["counts"]["dead_lettered"] == 1
            return body

        body = await assert_eventually(projected, timeout=20, message="projection caught up")
    assert body["counts"] == {"queued": 2, "running": 1, "retrying": 0, "completed": 2, "failed": 1,
                              "cancelled": 0, "dead_lettered": 1}
    assert body["depth_by_priority"] == {**{str(p): 0 for p in range(1, 11)}, "3": 1, "7": 1}
    assert len(body["throughput"]) == body["window_minutes"] == 15
    assert sum(m["completed"] for m in body["throughput"]) == 2
    assert sum(m["failed"] for m in body["throughput"]) == 1
    # ok2's completion is counted in the bucket of the minute it finished in (the last bucket, unless a minute
    # turned between its completion and this read).
    ok2 = (await client.get(f"/api/executions/{busy['ok2']}", headers=tenant.headers)).json()
    [bucket] = [m for m in body["throughput"] if m["minute"][:16] == ok2["completed_at"][:16]]
    assert bucket["completed"] >= 1
    assert body["throughput_per_minute"] == pytest.approx(3 / 15, abs=1e-3)
    assert body["avg_duration_ms"] == 200 and body["p95_duration_ms"] == 300
    assert body["error_rate"] == pytest.approx(1 / 3, abs=1e-3)
    # as_of: the projector's position in the tenant's partition, which holds all of the tenant's events
    last = await redis.xrevrange(keys.log(tenant.partition), count=1)
    assert body["as_of"] == last[0][0].decode()
    # another tenant sees only its own (nothing)
    other = await _stats(client, other_tenant)
    assert set(other["counts"].values()) == {0} and other["avg_duration_ms"] is None and other["error_rate"] is None


async def test_as_of_tells_the_feed_where_to_start(
    client: httpx.AsyncClient, tenant: TenantHandle, busy: dict[str, str], settings: Settings,
    committer: Committer, redis: Redis,
) -> None:
    async with projector(settings):

        async def caught_up() -> str:
            body = await _stats(client, tenant)
            assert body["counts"]["dead_lettered"] == 1
            as_of: str = body["as_of"]
            return as_of

        as_of = await assert_eventually(caught_up, timeout=20, message="projection caught up")
    # Projector stopped: a new event is not in the figures, and is exactly what follows as_of in the log.
    await mark_running(committer, tenant, busy["q3"])
    body = await _stats(client, tenant)
    assert body["as_of"] == as_of and body["counts"]["running"] == 1
    after = await redis.xrange(keys.log(tenant.partition), min=f"({as_of}", max="+")
    assert [fields[b"t"] for _, fields in after] == [b"execution.started"]


async def test_stats_needs_a_tenant_key(client: httpx.AsyncClient, settings: Settings) -> None:
    assert (await client.get("/api/stats")).status_code == 401
    r = await client.get("/api/stats", headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert r.status_code == 403


async def test_metrics_in_prometheus_format(
    client: httpx.AsyncClient, tenant: TenantHandle, busy: dict[str, str], settings: Settings,
    committer: Committer, redis: Redis,
) -> None:
    p = tenant.partition  # an executor holds one slot: the run marked running by ``busy``
    app = client._transport.app  # type: ignore[attr-defined]
    async with projector(settings):

        async def projected() -> str:
            app.state.metrics = None  # the SQL figures are cached for a few seconds
            r = await client.get("/metrics")
            assert r.status_code == 200
            assert _sample(r.text, "orq_executions", status="completed") == 2
            return r.text

        text = await assert_eventually(projected, timeout=20, message="projection caught up")
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("orq_executions", "orq_queue_depth", "orq_consumer_group_lag", "orq_dlq_size"):
        assert f"# TYPE {name} gauge" in text
    assert _sample(text, "orq_executions", status="queued") == 2
    assert _sample(text, "orq_executions", status="dead_lettered") == 1
    assert _sample(text, "orq_queue_depth", priority="3") == 1
    assert _sample(text, "orq_execution_duration_avg_seconds") == 0.2
    assert _sample(text, "orq_execution_duration_p95_seconds") == 0.3
    assert _sample(text, "orq_error_ratio") == pytest.approx(1 / 3, abs=1e-3)
    assert _sample(text, "orq_throughput_per_second") == pytest.approx(3 / 15 / 60, abs=1e-6)
    assert _sample(text, "orq_dlq_size", partition=str(p)) == 1
    assert _sample(text, "orq_running_executions", partition=str(p)) == 1
    assert _sample(text, "orq_consumer_group_lag", group="projector", partition=str(p), stream="log") == 0
    assert _sample(text, "orq_feed_subscribers") == 0
    assert _sample(text, "orq_feed_messages_total") == 0
    _parses_with_the_official_parser(text)
    # The projector is stopped now: what is appended waits for it, and the lag says how much.
    await mark_running(committer, tenant, busy["q3"])
    await mark_running(committer, tenant, busy["q7"])
    text = (await client.get("/metrics")).text
    assert _sample(text, "orq_consumer_group_lag", group="projector", partition=str(p), stream="log") == 2


def _parses_with_the_official_parser(text: str) -> None:
    """What Prometheus reads: typed families with the conventional names, the process collectors included."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["orq_executions"].type == "gauge"
    assert families["orq_feed_messages"].type == "counter"  # the family of the ``_total`` sample
    assert {s.name for s in families["orq_feed_messages"].samples} == {"orq_feed_messages_total"}
    assert "process_cpu_seconds" in families or "python_gc_objects_collected" in families
    lag = families["orq_consumer_group_lag"].samples
    assert lag and all(set(s.labels) == {"partition", "stream", "group"} for s in lag)
    for family in families.values():
        assert not family.name.endswith(("_ms", "_per_minute", "_rate")), family.name  # base units, ratios
