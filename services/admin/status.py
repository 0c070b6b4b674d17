"""``orq status`` (what every stream and group looks like) and ``orq maintenance [--dry-run]``."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared import keys
from shared.clock import iso, now_ms
from shared.db import create_engine, create_schema
from shared.inspection import PartitionStatus, partition_status
from shared.maintenance import checkpoints, run_maintenance
from shared.redis import connect
from shared.settings import Settings


async def _last_maintenance(redis: Redis) -> dict[str, Any] | None:
    raw = await redis.get(keys.maintenance_report())
    return None if raw is None else dict(msgspec.json.decode(raw))


def _table(statuses: list[PartitionStatus], marks: dict[int, str], last: dict[str, Any] | None) -> list[str]:
    lines = []
    for s in statuses:
        lines.append(f"partition {s.partition}: log {s.log_length} entries ({s.log_first_id or '-'} .. "
                     f"{s.log_last_id}), checkpoint {marks.get(s.partition, '-')}, DLQ {s.dlq}, "
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
    redis = connect(settings.redis_url)
    engine = create_engine(settings.database_url)
    try:
        statuses = await partition_status(redis, settings.partitions)
        try:
            marks = await checkpoints(engine)
        except Exception as exc:  # the SQL side may be down: the Redis side is still worth showing
            print(f"(projection checkpoints unavailable: {str(exc).splitlines()[0][:200]})")
            marks = {}
        last = await _last_maintenance(redis)
    finally:
        await redis.aclose()
        await engine.dispose()
    if as_json:
        body = {"partitions": [msgspec.to_builtins(s) for s in statuses],
                "checkpoints": {str(p): c for p, c in marks.items()}, "maintenance": last}
        print(json.dumps(body, indent=2))
    else:
        print("\n".join(_table(statuses, marks, last)))
    return 0


async def maintenance(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    redis = connect(settings.redis_url)
    engine = create_engine(settings.database_url)
    try:
        await create_schema(engine)
        report = await run_maintenance(settings, redis, engine, now_ms=now_ms(), dry_run=dry_run)
    finally:
        await redis.aclose()
        await engine.dispose()
    print(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    return 0
