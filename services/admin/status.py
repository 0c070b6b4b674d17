"""``orq status`` (what every stream and group looks like) and ``orq maintenance [--dry-run]``."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.clock import iso, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.inspection import PartitionStatus, partition_status
from shared.log.redis import client_for
from shared.readmodel import schema
from shared.readmodel.db import create_engine, create_schema
from shared.service.maintenance import checkpoints, run_maintenance


async def _last_maintenance(redis: Redis) -> dict[str, Any] | None:
    raw = await redis.get(keys.maintenance_report())
    return None if raw is None else dict(msgspec.json.decode(raw))


async def _quarantined(engine: AsyncEngine) -> dict[int, int]:
    """Events set aside by the projector, per partition (``orq quarantine list`` shows them)."""
    table = schema.projection_quarantine
    async with engine.connect() as conn:
        rows = await conn.execute(select(table.c.partition, func.count()).where(table.c.chunk == 0)
                                  .group_by(table.c.partition))
        return {int(p): int(n) for p, n in rows}


def _table(statuses: list[PartitionStatus], marks: dict[int, str], aside: dict[int, int],
           last: dict[str, Any] | None) -> list[str]:
    lines = []
    for s in statuses:
        lines.append(f"partition {s.partition} on {s.node}: log {s.log_length} entries ({s.log_first_id or '-'} .. "
                     f"{s.log_last_id}), checkpoint {marks.get(s.partition, '-')}, "
                     f"quarantined {aside.get(s.partition, 0)}, DLQ {s.dlq}, "
                     f"work {s.work_length}, notify {s.notify_length}")
        for g in s.groups:
            lines.append(f"  {g.stream:<6} {g.name:<10} consumers {g.consumers:<3} lag {g.lag:<8} "
                         f"pending {g.pending:<8} last delivered {g.last_delivered}")
    if last is None:
        lines.append("maintenance: never ran")
    else:
        trimmed = sum(t["removed"] for t in last.get("logs", []))
        purged = sum(len(d["purged"]) for d in last.get("dlq", []))
        lines.append(f"maintenance: last run {iso(int(last['at_ms']))}, trimmed {trimmed} log entries, "
                     f"purged {purged} DLQ entries")
    return lines


async def status(settings: Settings, *, as_json: bool) -> int:
    redis = client_for(settings)
    engine = create_engine(settings.database_url)
    try:
        statuses = await partition_status(redis, settings.partitions)
        try:
            marks, aside = await checkpoints(engine), await _quarantined(engine)
        except Exception as exc:  # the SQL side may be down (or not set up yet): the Redis side is still worth showing
            print(f"(projection checkpoints unavailable: {str(exc).splitlines()[0][:200]})")
            marks, aside = {}, {}
        last = await _last_maintenance(redis)
    finally:
        await redis.aclose()
        await engine.dispose()
    if as_json:
        body = {"partitions": [msgspec.to_builtins(s) for s in statuses],
                "checkpoints": {str(p): c for p, c in marks.items()},
                "quarantined": {str(p): n for p, n in aside.items()}, "maintenance": last}
        print(json.dumps(body, indent=2))
    else:
        print("\n".join(_table(statuses, marks, aside, last)))
    return 0


async def maintenance(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    redis = client_for(settings)
    engine = create_engine(settings.database_url)
    try:
        await create_schema(engine)
        report = await run_maintenance(settings, redis, engine, now_ms=now_ms(), dry_run=dry_run)
    finally:
        await redis.aclose()
        await engine.dispose()
    print(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    return 0
