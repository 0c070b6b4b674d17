"""Figures for ``GET /api/stats`` and ``GET /metrics``: execution statistics and operational gauges.

Where each figure comes from:

- **SQL projection** (``executions``): counts by status, DLQ count, depth by priority (queued executions),
  throughput, durations and error rate. These answer queries, so they come from the projection like every
  other query, and are consistent with each other (one position of the projector).
- **Redis** (``/metrics`` only): consumer-group lag and pending entries, stream lengths, running executions
  (the ``running`` hash), backlog (the ``queued`` hash) and DLQ size per partition: the live state of the
  machinery, which the projection does not hold. Read by ``shared/log/inspection.py`` and exported by
  ``shared/service/metrics.py``, the same families as every service's metrics port.

Windowed figures use the last ``WINDOW_MINUTES`` minutes, rolling from ``now``: throughput is executions
finished (completed or failed) per minute; durations are those of completed executions; the error rate is
failed / (completed + failed). Cancelled executions count in none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.domain.aggregates import Status
from shared.log import keys
from shared.log.inspection import partition_status
from shared.readmodel.history import CHECKPOINT_NAME
from shared.readmodel.schema import executions, projection_checkpoints
from shared.service.metrics import Exporter, Metric, counter, gauge, stream_metrics

WINDOW_MINUTES = 15
MINUTE_MS = 60_000
DEAD_LETTERED = "dead_lettered"
COUNTED = (*(s.value for s in Status), DEAD_LETTERED)
# /metrics is scraped every few seconds by every Prometheus: its SQL figures are reused this long.
METRICS_CACHE_S = 5.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """Executions finished in one minute (``start`` = the minute's first ms)."""

    start: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Figures:
    """Execution statistics at ``now``."""

    now: int
    counts: dict[str, int]
    depth: dict[int, int]
    buckets: list[Bucket]
    throughput_per_minute: float
    avg_duration_ms: float | None
    p95_duration_ms: float | None
    error_rate: float | None
    as_of: str | None = None


def percentile(values: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def summarize(
    counts: Iterable[tuple[str, int]],
    dead_lettered: int,
    depth: Iterable[tuple[int, int]],
    finished: Iterable[tuple[str, int, int | None]],
    now: int,
    window_minutes: int = WINDOW_MINUTES,
    as_of: str | None = None,
) -> Figures:
    """Pure: figures from the projection's rows (``finished`` = (status, completed_at, duration_ms))."""
    by_status = dict.fromkeys(COUNTED, 0)
    for status, n in counts:
        if status in by_status:
            by_status[status] += n
    by_status[DEAD_LETTERED] = dead_lettered
    by_priority = {prio: 0 for prio in keys.PRIORITIES}
    for prio, n in depth:
        by_priority[prio] = by_priority.get(prio, 0) + n
    current = now // MINUTE_MS
    first = current - window_minutes + 1
    per_minute = {m: [0, 0] for m in range(first, current + 1)}
    window_start = now - window_minutes * MINUTE_MS
    completed = failed = 0
    durations: list[int] = []
    for status, at, duration in finished:
        # A clock a little ahead on an executor must not drop its runs: the future counts as now.
        minute = min(at // MINUTE_MS, current)
        slot = per_minute.get(minute)
        if slot is not None:
            slot[0 if status == Status.COMPLETED else 1] += 1
        if at < window_start:
            continue
        if status == Status.COMPLETED:
            completed += 1
            if duration is not None:
                durations.append(duration)
        else:
            failed += 1
    return Figures(
        now=now,
        counts=by_status,
        depth=by_priority,
        buckets=[Bucket(m * MINUTE_MS, c, f) for m, (c, f) in sorted(per_minute.items())],
        throughput_per_minute=(completed + failed) / window_minutes,
        avg_duration_ms=sum(durations) / len(durations) if durations else None,
        p95_duration_ms=percentile(durations, 0.95),
        error_rate=failed / (completed + failed) if completed + failed else None,
        as_of=as_of,
    )


async def execution_figures(
    engine: AsyncEngine,
    now: int,
    tenant_id: str | None = None,
    partition: int | None = None,
    window_minutes: int = WINDOW_MINUTES,
) -> Figures:
    """Read the projection: one tenant's figures, or every tenant's (``tenant_id=None``).

    With ``partition``, ``as_of`` is the projector's checkpoint there, read in the same snapshot as the
    rows: the figures include exactly the tenant's events up to it, so a client that applies the feed's
    events after ``as_of`` (``since=as_of``) counts each event once.
    """
    c = executions.c
    scope = [c.tenant_id == tenant_id] if tenant_id is not None else []
    since = min(now - window_minutes * MINUTE_MS, (now // MINUTE_MS - window_minutes + 1) * MINUTE_MS)
    as_of: str | None = None
    async with engine.connect() as conn:
        await _snapshot(conn)
        if partition is not None:
            cp = projection_checkpoints.c
            as_of = (
                await conn.execute(
                    select(cp.last_id).where(cp.name == CHECKPOINT_NAME, cp.partition == partition)
                )
            ).scalar_one_or_none()
        counts = (await conn.execute(select(c.status, func.count()).where(*scope).group_by(c.status))).all()
        dlq = (await conn.execute(select(func.count()).where(*scope, c.in_dlq == true()))).scalar_one()
        depth = (
            await conn.execute(
                select(c.priority, func.count()).where(*scope, c.status == Status.QUEUED.value).group_by(c.priority)
            )
        ).all()
        finished = (
            await conn.execute(
                select(c.status, c.completed_at, c.duration_ms).where(
                    *scope,
                    c.status.in_([Status.COMPLETED.value, Status.FAILED.value]),
                    c.completed_at >= since,
                )
            )
        ).all()
    return summarize(
        [(r[0], int(r[1])) for r in counts],
        int(dlq),
        [(int(r[0]), int(r[1])) for r in depth],
        [(r[0], int(r[1]), None if r[2] is None else int(r[2])) for r in finished],
        now,
        window_minutes,
        as_of,
    )


async def _snapshot(conn: AsyncConnection) -> None:
    """Make the following reads one snapshot. MySQL's REPEATABLE READ does it from the first read; the
    SQLite driver opens no transaction for reads, so one is opened explicitly (ended by the rollback)."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN")


class FiguresCache:
    """The all-tenants figures, reused for ``METRICS_CACHE_S`` (a scrape storm costs one set of queries)."""

    def __init__(self, ttl_s: float = METRICS_CACHE_S) -> None:
        self._ttl_s = ttl_s
        self._value: Figures | None = None
        self._at = 0.0

    async def get(self, engine: AsyncEngine, now: int) -> Figures:
        if self._value is None or time.monotonic() - self._at > self._ttl_s:
            self._value = await execution_figures(engine, now)
            self._at = time.monotonic()
        return self._value


# --- Prometheus ------------------------------------------------------------------------------------------------


def api_metrics(figures: Figures, feed: dict[str, int]) -> list[Metric]:
    """The API's own families: the projection's figures and this process's feed (``feed``: its counters)."""
    def seconds(ms: float | None) -> float | None:
        return None if ms is None else ms / 1000
    last = figures.buckets[-1]
    throughput = figures.throughput_per_minute / 60
    return [
        Metric("orq_executions", "gauge", "Executions by status (SQL projection; dead_lettered = now in the DLQ).",
               {(("status", s),): n for s, n in figures.counts.items()}),
        Metric("orq_queue_depth", "gauge", "Queued executions by priority (SQL projection).",
               {(("priority", str(p)),): n for p, n in figures.depth.items()}),
        gauge("orq_throughput_per_second",
              f"Executions finished (completed or failed) per second over the last {WINDOW_MINUTES} minutes.",
              throughput),
        Metric("orq_finished_last_minute", "gauge", "Executions finished in the current minute, by outcome.",
               {(("status", "completed"),): last.completed, (("status", "failed"),): last.failed}),
        gauge("orq_execution_duration_avg_seconds",
              f"Average duration of executions completed in the last {WINDOW_MINUTES} minutes.",
              seconds(figures.avg_duration_ms)),
        gauge("orq_execution_duration_p95_seconds",
              f"95th percentile duration of executions completed in the last {WINDOW_MINUTES} minutes.",
              seconds(figures.p95_duration_ms)),
        gauge("orq_error_ratio", f"failed / (completed + failed) over the last {WINDOW_MINUTES} minutes.",
              figures.error_rate),
        gauge("orq_feed_subscribers", "WebSocket subscribers of this API process.", feed["subscribers"]),
        counter("orq_feed_messages_total", "Events handed to WebSocket subscribers by this API process.",
                feed["delivered"]),
        counter("orq_feed_dropped_total", "Subscribers of this API process dropped for falling behind.",
                feed["dropped"]),
    ]


class ApiMetrics:
    """``/metrics`` of one API process: its exporter, and the SQL figures reused for ``METRICS_CACHE_S``.

    The stream families are read from Redis at every scrape (one pipelined read), so an operator sees lag
    the moment it grows."""

    def __init__(self) -> None:
        self.exporter = Exporter()
        self.figures = FiguresCache()

    async def scrape(
        self, engine: AsyncEngine, redis: Redis, partitions: int, feed: dict[str, int], now: int
    ) -> bytes:
        figures = await self.figures.get(engine, now)
        streams = stream_metrics(await partition_status(redis, partitions))
        return self.exporter.render([*api_metrics(figures, feed), *streams])
