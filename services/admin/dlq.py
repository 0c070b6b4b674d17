"""``orq dlq list|retry|purge``: the dead-letter queues of every partition, in bulk, by filter.

The DLQ streams (``orq:{p}:dlq``) are read directly: they are what the executor wrote, including entries
not projected yet. Retry and purge are the same units as the API's (``requeue_unit`` and ``dlq_purge_unit`` of
``shared.domain.executions.commands``), each guarded on the state it observed, so an entry that moved
meanwhile is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import cast

from redis.asyncio import Redis

from shared.domain import commit_script
from shared.domain.executions.commands import dlq_purge_unit, requeue_unit
from shared.domain.executions.state import read_execution
from shared.infra.clock import iso, now_ms, stream_id_parts
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer
from shared.log.redis import Entries, client_for, text

PAGE = 1000


@dataclass(frozen=True, slots=True)
class DlqItem:
    partition: int
    entry_id: str
    execution_id: str
    tenant_id: str
    workflow_id: str
    reason: str
    error: str
    dead_lettered_at: str | None


@dataclass(frozen=True, slots=True)
class Filter:
    tenant: str | None = None
    workflow: str | None = None
    error: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.tenant or self.workflow or self.error or self.since_ms or self.until_ms)


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 (a trailing Z allowed; naive times are UTC) or epoch milliseconds."""
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"orq: {name}: not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo).astimezone()
    return int(moment.timestamp() * 1000)


async def matching(redis: Redis, partitions: int, f: Filter, limit: int = 0) -> list[DlqItem]:
    """DLQ entries of every partition (oldest first) that pass ``f``."""
    out: list[DlqItem] = []
    lo = str(f.since_ms) if f.since_ms else "-"
    hi = f"({f.until_ms}" if f.until_ms else "+"
    for p in range(partitions):
        if f.tenant and keys.partition_of(f.tenant, partitions) != p:
            continue
        start = lo
        while True:
            entries = cast(Entries, await redis.xrange(keys.dlq(p), start, hi, count=PAGE))
            for raw_id, fields in entries:
                item = await _item(redis, p, text(raw_id), fields)
                if _passes(item, f):
                    out.append(item)
                    if limit and len(out) >= limit:
                        return out
            if len(entries) < PAGE:
                break
            start = f"({text(entries[-1][0])}"
    return out


async def _item(redis: Redis, p: int, entry_id: str, fields: dict[bytes, bytes]) -> DlqItem:
    execution_id = text(fields.get(b"e"))
    state = await read_execution(redis, p, execution_id, fields=("workflow_id",))
    return DlqItem(p, entry_id, execution_id, keys.entry_tenant(fields), state.workflow_id if state else "",
                   text(fields.get(b"reason")), text(fields.get(b"error")), iso(stream_id_parts(entry_id)[0]))


def _passes(item: DlqItem, f: Filter) -> bool:
    if f.tenant and item.tenant_id != f.tenant:
        return False
    if f.workflow and item.workflow_id != f.workflow:
        return False
    return not (f.error and f.error.lower() not in item.error.lower())


async def _act(redis: Redis, committer: Committer, item: DlqItem, action: str) -> bool:
    """Retry or purge one entry, guarded on the state seen now; False when it moved meanwhile."""
    state = await read_execution(redis, item.partition, item.execution_id)
    if state is None or not state.dead_lettered or state.dlq_id != item.entry_id:
        return False
    if action == "purge":
        unit = dlq_purge_unit(p=item.partition, tenant_id=item.tenant_id, execution_id=item.execution_id,
                              now_ms=now_ms())
    else:
        if state.status is None:
            return False
        unit = requeue_unit(p=item.partition, tenant_id=item.tenant_id, execution_id=item.execution_id,
                            observed=state.status, priority=state.priority, from_dlq=True, now_ms=now_ms())
    return isinstance(await committer.commit(unit), Applied)


def _print(item: DlqItem, as_json: bool, prefix: str = "") -> None:
    if as_json:
        print(json.dumps({**asdict(item), **({"action": prefix.strip()} if prefix else {})}))
    else:
        print(f"{prefix}{item.dead_lettered_at}  p{item.partition}  {item.execution_id}  tenant {item.tenant_id}  "
              f"workflow {item.workflow_id or '-'}  {item.reason}: {item.error[:120]}")


async def dlq_command(settings: Settings, args: argparse.Namespace) -> int:
    f = Filter(args.tenant, args.workflow, args.error, parse_time(args.since, "--since"),
               parse_time(args.until, "--until"))
    if args.action != "list" and f.empty and not args.all:
        print("orq: refusing to act on the whole DLQ without a filter; add --all to mean it", file=sys.stderr)
        return 2
    redis = client_for(settings)
    committer = commit_script.committer(redis, wait_replicas=settings.redis_wait_replicas)
    try:
        items = await matching(redis, settings.partitions, f, args.limit)
        if args.action == "list" or args.dry_run:
            verb = "" if args.action == "list" else f"would {args.action}: "
            for item in items:
                _print(item, args.json, verb)
            if not args.json:
                print(f"{len(items)} dead-lettered execution(s)", file=sys.stderr)
            return 0
        done = skipped = 0
        for item in items:
            if await _act(redis, committer, item, args.action):
                done += 1
                _print(item, args.json, "retried: " if args.action == "retry" else "purged: ")
            else:
                skipped += 1
        print(f"{args.action}: {done} done, {skipped} skipped (changed meanwhile)", file=sys.stderr)
        return 0
    finally:
        await committer.close()
        await redis.aclose()
