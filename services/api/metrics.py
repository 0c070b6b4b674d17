"""Figures for ``GET /api/stats`` and ``GET /metrics``: execution statistics and operational gauges.

Where each figure comes from:

- **SQL projection** (``executions``): counts by status, DLQ count, depth by priority (queued executions),
  throughput, durations and error rate. These answer queries, so they come from the projection like every
  other query, and are consistent with each other (one position of the projector).
- **Redis** (``/metrics`` only): consumer-group lag and pending entries per group and partition
  (``XINFO GROUPS``), executor slots busy (the ``running`` hash), backlog (the ``queued`` hash), DLQ
  stream length and log length: the live state of the machinery, which the projection does not hold.

Windowed figures use the last ``WINDOW_MINUTES`` minutes, rolling from ``now``: throughput is executions
finished (completed or failed) per minute; durations are those of completed executions; the error rate is
failed / (completed + failed). Cancelled executions count in none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projector.store import CHECKPOINT_NAME
from shared import keys
from shared.inspection import LAG_COUNT_CAP
from shared.redis import text
from shared.schema import executions, projection_checkpoints
from shared.state import Status

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


# --- Redis gauges ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    partition: int
    lag: int
    pending: int


@dataclass(frozen=True, slots=True)
class Machinery:
    """Live state of the streams, per partition."""

    lags: list[GroupLag]
    slots_busy: dict[int, int]
    backlog: dict[int, int]
    dlq: dict[int, int]
    log_length: dict[int, int]


def _groups(reply: Any) -> list[dict[str, Any]]:
    if isinstance(reply, ResponseError | None):  # no such stream yet
        return []
    return [{text(k) if isinstance(k, bytes) else k: v for k, v in g.items()} for g in cast(list[Any], reply)]


def _hash_total(reply: Any) -> int:
    return sum(int(v) for v in cast(list[Any], reply or []) if int(v) > 0)


async def machinery(redis: Redis, partitions: int) -> Machinery:
    """One pipeline of ``XINFO GROUPS``, ``HVALS``, ``XLEN`` over every partition (and a second for lags
    Redis cannot tell)."""
    streams: list[tuple[int, str]] = []
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            for stream in (keys.log(p), *keys.work_streams(p)):
                streams.append((p, stream))
                pipe.xinfo_groups(stream)
            pipe.hvals(keys.running(p))
            pipe.hvals(keys.queued(p))
            pipe.xlen(keys.dlq(p))
            pipe.xlen(keys.log(p))
        replies = await pipe.execute(raise_on_error=False)
    per_partition = len(keys.PRIORITIES) + 1
    slots, backlog, dlq, log_length = {}, {}, {}, {}
    infos: list[tuple[int, str, dict[str, Any]]] = []
    at = 0
    for p in range(partitions):
        for n in range(per_partition):
            infos += [(p, streams[p * per_partition + n][1], g) for g in _groups(replies[at + n])]
        at += per_partition
        slots[p] = _hash_total(replies[at])
        backlog[p] = _hash_total(replies[at + 1])
        dlq[p] = int(replies[at + 2] or 0)
        log_length[p] = int(replies[at + 3] or 0)
        at += 4
    lags = await _lags(redis, infos)
    return Machinery(lags, slots, backlog, dlq, log_length)


async def _lags(redis: Redis, infos: list[tuple[int, str, dict[str, Any]]]) -> list[GroupLag]:
    unknown = [(i, stream, text(g.get("last-delivered-id"))) for i, (_, stream, g) in enumerate(infos)
               if g.get("lag") is None]
    counted: dict[int, int] = {}
    if unknown:
        async with redis.pipeline(transaction=False) as pipe:
            for _, stream, last in unknown:
                pipe.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_CAP)
            replies = await pipe.execute(raise_on_error=False)
        for (i, _, _), reply in zip(unknown, replies, strict=True):
            counted[i] = len(reply) if isinstance(reply, list) else 0
    totals: dict[tuple[str, int], list[int]] = {}
    for i, (p, _, g) in enumerate(infos):
        lag = counted[i] if i in counted else int(g["lag"])
        slot = totals.setdefault((text(g.get("name")), p), [0, 0])
        slot[0] += lag
        slot[1] += int(g.get("pending") or 0)
    return [GroupLag(group, p, lag, pending) for (group, p), (lag, pending) in sorted(totals.items())]


# --- Prometheus text format ------------------------------------------------------------------------------------

Sample = tuple[dict[str, str], float]


class Exposition:
    """Prometheus text exposition format 0.0.4, written by hand (a few gauges need no client library)."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._lines: list[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: float | None) -> None:
        self.add(name, "gauge", help_text, [] if value is None else [({}, value)])

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in
               labels.items())
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def exposition(figures: Figures, state: Machinery, feed: dict[str, int]) -> str:
    """Every ``orq_*`` metric (``feed``: this API process's feed counters)."""
    out = Exposition()
    out.add("orq_executions", "gauge", "Executions by status (SQL projection; dead_lettered = now in the DLQ).",
            [({"status": s}, n) for s, n in figures.counts.items()])
    out.add("orq_queue_depth", "gauge", "Queued executions by priority (SQL projection).",
            [({"priority": str(p)}, n) for p, n in figures.depth.items()])
    out.gauge("orq_throughput_per_minute",
              f"Executions finished (completed or failed) per minute over the last {WINDOW_MINUTES} minutes.",
              figures.throughput_per_minute)
    out.add("orq_finished_last_minute", "gauge", "Executions finished in the current minute, by outcome.",
            [({"status": "completed"}, figures.buckets[-1].completed),
             ({"status": "failed"}, figures.buckets[-1].failed)])
    out.gauge("orq_execution_duration_avg_ms",
              f"Average duration of executions completed in the last {WINDOW_MINUTES} minutes.",
              figures.avg_duration_ms)
    out.gauge("orq_execution_duration_p95_ms",
              f"95th percentile duration of executions completed in the last {WINDOW_MINUTES} minutes.",
              figures.p95_duration_ms)
    out.gauge("orq_error_rate", f"failed / (completed + failed) over the last {WINDOW_MINUTES} minutes.",
              figures.error_rate)
    out.add("orq_consumer_group_lag", "gauge", "Entries not yet delivered to a consumer group (XINFO GROUPS lag).",
            [({"group": g.group, "partition": str(g.partition)}, g.lag) for g in state.lags])
    out.add("orq_consumer_group_pending", "gauge", "Entries delivered to a group and not acknowledged yet.",
            [({"group": g.group, "partition": str(g.partition)}, g.pending) for g in state.lags])
    out.add("orq_executor_slots_busy", "gauge", "Executions running now (executor slots in use).",
            [({"partition": str(p)}, n) for p, n in state.slots_busy.items()])
    out.add("orq_backlog", "gauge", "Executions waiting in the fair-share backlogs.",
            [({"partition": str(p)}, n) for p, n in state.backlog.items()])
    out.add("orq_dlq_size", "gauge", "Entries in the dead-letter stream.",
            [({"partition": str(p)}, n) for p, n in state.dlq.items()])
    out.add("orq_log_length", "gauge", "Entries in the event log stream.",
            [({"partition": str(p)}, n) for p, n in state.log_length.items()])
    out.gauge("orq_feed_subscribers", "WebSocket subscribers of this API process.", feed["subscribers"])
    out.add("orq_feed_messages_total", "counter", "Events handed to WebSocket subscribers by this API process.",
            [({}, feed["delivered"])])
    out.add("orq_feed_dropped_total", "counter", "Subscribers of this API process dropped for falling behind.",
            [({}, feed["dropped"])])
    return out.text()
