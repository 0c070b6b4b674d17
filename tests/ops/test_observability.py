"""Structured logs and the metrics port."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from shared.infra.settings import Settings
from shared.log import keys
from shared.service.metrics import counter
from shared.service.metrics_port import start_metrics_server
from shared.service.runtime import configure_logging
from tests.helpers import REDIS_URL, free_port


def test_json_logs_carry_the_ids_from_extra(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        logging.getLogger("orq.test").warning("step %d failed", 2,
                                              extra={"execution_id": "e1", "step_index": 2, "tenant_id": "t1"})
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("{")]
    record = json.loads(line)
    assert record["message"] == "step 2 failed" and record["level"] == "WARNING" and record["logger"] == "orq.test"
    assert (record["execution_id"], record["step_index"], record["tenant_id"]) == ("e1", 2, "t1")
    assert record["ts"].endswith("Z")


async def test_metrics_port_serves_prometheus_text(redis: Redis) -> None:
    await redis.xadd(keys.log(1), {"t": "x"})
    await redis.xgroup_create(keys.log(1), "projector", id="0")
    await redis.xadd(keys.dlq(2), {"e": "x"})
    settings = Settings(redis_url=REDIS_URL, partitions=4, metrics_port=free_port())
    stop = asyncio.Event()
    task = await start_metrics_server(settings, stop, redis, extra=lambda: [counter("orq_test_total", "t", 7)],
                                      host="127.0.0.1")
    assert task is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.metrics_port}") as client:
            reply = await client.get("/metrics")
            missing = await client.get("/nope")
    finally:
        stop.set()
        await task
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'orq_consumer_group_lag{group="projector",partition="1",stream="log"} 1.0' in text  # labels sorted
    assert 'orq_stream_length{partition="1",stream="log"} 1.0' in text
    assert 'orq_dlq_size{partition="2"} 1.0' in text
    assert "orq_test_total 7.0" in text and "# TYPE orq_test_total counter" in text
    assert missing.status_code == 404
    families = {f.name: f for f in text_string_to_metric_families(text)}  # what Prometheus itself reads
    assert families["orq_test"].type == "counter" and families["orq_up"].samples[0].value == 1
    assert "process_cpu_seconds" in families or "python_gc_objects_collected" in families
    # The same families, names and labels as the API's /metrics (one exporter, one lag reader).
    assert {s.labels["group"] for s in families["orq_consumer_group_lag"].samples} == {"projector"}
    assert {"orq_consumer_group_pending", "orq_running_executions", "orq_backlog"} <= set(families)


async def test_metrics_port_is_off_by_default(redis: Redis) -> None:
    assert await start_metrics_server(Settings(redis_url=REDIS_URL), asyncio.Event(), redis) is None
