"""Maintenance: keep Redis memory bounded without losing history (``orq maintenance``, and the notifier's
scheduled run, once per ``ORQ_MAINTENANCE_INTERVAL_S`` across instances).

1. **Trim each log** (``XTRIM MINID``) below the lowest of: every consumer group's first unacknowledged
   entry (its oldest pending entry, else its last delivered one), the projector's archived checkpoint
   (``projection_checkpoints``: everything at or below it is in ``event_archive``), and a minimum retention
   (``ORQ_LOG_MIN_RETENTION_S``). The group bounds are computed and the trim done in one Lua call, so a
   group cannot fall behind between the two. Nothing is trimmed before the first checkpoint.
2. **Cap the DLQ** per partition (``ORQ_DLQ_MAX_ENTRIES``, ``ORQ_DLQ_MAX_AGE_S``): the oldest entries past
   the policy are purged through :func:`shared.domain.executions.commands.dlq_purge_unit` (an
   ``execution.dlq_purged`` event each, so the projections agree).
3. **Idempotency keys**: they are written with a TTL; any found without one (an older version, a manual
   ``SET``) gets ``settings.idempotency_ttl_s``.

``dry_run`` computes and reports the same without changing anything. Work-queue item abandonment belongs to
the queues' own service.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain import commit_script
from shared.domain.executions.commands import dlq_purge_unit
from shared.infra.clock import stream_id_parts
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, load_lua
from shared.log.redis import Entries, text
from shared.readmodel import schema

log = logging.getLogger(__name__)

DRY_RUN_COUNT_CAP = 100_000
SCAN_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class LogTrim:
    """A partition's log: entries below ``bound`` are (or would be) removed; ``limited_by`` set the bound."""

    partition: int
    bound: str
    limited_by: str
    removed: int


@dataclass(frozen=True, slots=True)
class DlqCap:
    partition: int
    size: int
    purged: list[str]


@dataclass(slots=True)
class Report:
    """What a maintenance run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    at_ms: int
    logs: list[LogTrim] = field(default_factory=list)
    dlq: list[DlqCap] = field(default_factory=list)
    idempotency_keys: int = 0
    idempotency_without_ttl: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        trimmed = sum(t.removed for t in self.logs)
        purged = sum(len(d.purged) for d in self.dlq)
        return (f"{verb} {trimmed} log entries, {verb} {purged} DLQ entries, "
                f"{self.idempotency_without_ttl} of {self.idempotency_keys} idempotency keys had no TTL")

    def lines(self) -> list[str]:
        """A human report, one line per partition and step."""
        verb = "would trim" if self.dry_run else "trimmed"
        out = [f"{'DRY RUN: ' if self.dry_run else ''}maintenance"]
        for t in self.logs:
            out.append(f"  log   p{t.partition}: {verb} {t.removed} entries below {t.bound} "
                       f"(limited by {t.limited_by})")
        for d in self.dlq:
            what = "would purge" if self.dry_run else "purged"
            out.append(f"  dlq   p{d.partition}: {d.size} entries, {what} {len(d.purged)}")
        out.append(f"  idempotency keys: {self.idempotency_keys}, without TTL: {self.idempotency_without_ttl}"
                   + (" (would set)" if self.dry_run else " (set)"))
        return out


async def checkpoints(engine: AsyncEngine) -> dict[int, str]:
    """Lowest checkpoint per partition across every projection that keeps one."""
    table = schema.projection_checkpoints
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table.c.partition, table.c.last_id))).all()
    out: dict[int, str] = {}
    for p, last_id in rows:
        current = out.get(int(p))
        if current is None or stream_id_parts(str(last_id)) < stream_id_parts(current):
            out[int(p)] = str(last_id)
    return out


async def trim_log(redis: Redis, p: int, checkpoint: str | None, *, retention_bound: str, dry_run: bool) -> LogTrim:
    """Trim (or measure) partition ``p``'s log below what every reader has finished with."""
    if checkpoint is None:
        return LogTrim(p, "0-0", "no projector checkpoint yet", 0)
    bound, by = checkpoint, "projector checkpoint"
    if stream_id_parts(retention_bound) < stream_id_parts(bound):
        bound, by = retention_bound, "minimum retention"
    script = redis.register_script(load_lua("shared.service", "log_trim.lua"))
    reply = await script(keys=[keys.log(p)], args=[bound, by, "0" if dry_run else "1"])
    bound, by, removed = text(reply[0]), text(reply[1]), int(reply[2])
    if dry_run:
        below = await redis.xrange(keys.log(p), "-", f"({bound}", count=DRY_RUN_COUNT_CAP) if bound != "0-0" else []
        removed = len(cast(Entries, below))
    return LogTrim(p, bound, by, removed)


async def cap_dlq(redis: Redis, committer: Committer | None, p: int, settings: Settings, now_ms: int) -> DlqCap:
    """Purge the oldest DLQ entries past ``ORQ_DLQ_MAX_ENTRIES`` or older than ``ORQ_DLQ_MAX_AGE_S``."""
    stream = keys.dlq(p)
    size = int(await redis.xlen(stream))
    over = max(0, size - settings.dlq_max_entries) if settings.dlq_max_entries > 0 else 0
    victims: dict[str, tuple[str, str]] = {}
    if over:
        for raw_id, fields in cast(Entries, await redis.xrange(stream, "-", "+", count=over)):
            victims[text(raw_id)] = (keys.entry_tenant(fields), text(fields.get(b"e")))
    if settings.dlq_max_age_s > 0:
        cutoff = now_ms - settings.dlq_max_age_s * 1000
        old = await redis.xrange(stream, "-", f"({cutoff}-0", count=DRY_RUN_COUNT_CAP)
        for raw_id, fields in cast(Entries, old):
            victims[text(raw_id)] = (keys.entry_tenant(fields), text(fields.get(b"e")))
    purged = []
    for entry_id, (tenant_id, execution_id) in sorted(victims.items(), key=lambda kv: stream_id_parts(kv[0])):
        purged.append(execution_id)
        if committer is None:
            continue
        outcome = await committer.commit(dlq_purge_unit(p=p, tenant_id=tenant_id, execution_id=execution_id,
                                                        now_ms=now_ms))
        if not isinstance(outcome, Applied):  # an entry its execution no longer points at: just drop it
            await redis.xdel(stream, entry_id)
    return DlqCap(p, size, purged)


async def idempotency_keys(redis: Redis, partitions: int, ttl_s: int, *, dry_run: bool) -> tuple[int, int]:
    """(idempotency keys, of which without a TTL); those get ``ttl_s`` unless ``dry_run``."""
    total = without = 0
    for p in range(partitions):
        async for key in redis.scan_iter(match=f"{keys.tag(p)}:idem:*", count=SCAN_BATCH):
            total += 1
            if await redis.ttl(key) == -1:
                without += 1
                if not dry_run:
                    await redis.expire(key, ttl_s)
    return total, without


async def run_maintenance(
    settings: Settings, redis: Redis, engine: AsyncEngine, *, now_ms: int, dry_run: bool = False
) -> Report:
    """One maintenance pass over every partition; the report is kept in Redis for ``orq status``."""
    report = Report(dry_run=dry_run, at_ms=now_ms)
    marks = await checkpoints(engine)
    retention_bound = f"{max(0, now_ms - settings.log_min_retention_s * 1000)}-0"
    committer = None if dry_run else commit_script.committer(redis, wait_replicas=settings.redis_wait_replicas)
    try:
        for p in range(settings.partitions):
            report.logs.append(await trim_log(redis, p, marks.get(p), retention_bound=retention_bound,
                                              dry_run=dry_run))
            report.dlq.append(await cap_dlq(redis, committer, p, settings, now_ms))
    finally:
        if committer is not None:
            await committer.close()
    report.idempotency_keys, report.idempotency_without_ttl = await idempotency_keys(
        redis, settings.partitions, settings.idempotency_ttl_s, dry_run=dry_run
    )
    if not dry_run:
        await redis.set(keys.maintenance_report(), msgspec.json.encode(report.to_dict()))
    return report
