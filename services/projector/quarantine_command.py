"""``orq quarantine list|retry``: events the projector could not project and set aside, and retrying them
after a fix.

``retry`` marks the chosen events; the projector holding their partition applies them between batches,
or — when no projector holds it — this command takes the partition's lock and applies them itself
(``services.projector.retry``). It then waits (``--wait``) and reports each one: ``applied`` (projected,
archived, gone from quarantine), ``failed`` (still quarantined, with the new error) or ``pending`` (no
projector took it in time; it stays requested and is applied when one does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict

from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector import quarantine
from services.projector.quarantine import Quarantined
from services.projector.retry import retry_unheld
from shared.infra.clock import iso, now_ms
from shared.infra.settings import Settings
from shared.log.redis import client_for
from shared.readmodel.db import create_engine, create_schema

POLL_S = 0.5


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``orq quarantine``'s arguments (orquesta/cli.py adds it beside the operator's other commands)."""
    quarantine = sub.add_parser("quarantine", help="events the projector could not project: list, retry after a fix")
    quarantine.add_argument("action", choices=["list", "retry"])
    quarantine.add_argument("stream_ids", nargs="*", metavar="STREAM_ID", help="only these events (stream ids)")
    quarantine.add_argument("--partition", type=int, help="only this partition's")
    quarantine.add_argument("--tenant", help="only this tenant's")
    quarantine.add_argument("--all", action="store_true", help="retry every quarantined event")
    quarantine.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    quarantine.add_argument("--wait", type=float, default=30.0,
                            help="retry: seconds to wait for the projectors to apply them (default 30)")
    quarantine.add_argument("--json", action="store_true", help="JSON lines")


async def quarantine_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "retry" and not (args.stream_ids or args.tenant or args.partition is not None or args.all):
        print("orq: say which events to retry (STREAM_ID…, --tenant, --partition) or --all", file=sys.stderr)
        return 2
    engine = create_engine(settings.database_url)
    try:
        await create_schema(engine)
        entries = await _select(engine, args)
        if args.action == "list":
            for entry in entries:
                _print(entry, args.json)
            if not args.json:
                print(f"{len(entries)} quarantined event(s)", file=sys.stderr)
            return 0
        return await _retry(settings, engine, entries, args)
    finally:
        await engine.dispose()


async def _select(engine: AsyncEngine, args: argparse.Namespace) -> list[Quarantined]:
    async with engine.connect() as conn:
        return await quarantine.listing(conn, partition=args.partition, tenant=args.tenant,
                                        stream_ids=args.stream_ids, limit=args.limit)


async def _retry(settings: Settings, engine: AsyncEngine, entries: list[Quarantined], args: argparse.Namespace) -> int:
    if not entries:
        print("retry: nothing quarantined matches", file=sys.stderr)
        return 0
    async with engine.begin() as conn:
        await quarantine.request_retry(conn, entries, now_ms())
    redis = client_for(settings)
    try:
        here = await retry_unheld(redis, engine, sorted({e.partition for e in entries}))
    finally:
        await redis.aclose()
    if len(here) < len({e.partition for e in entries}):
        print("waiting for the projectors holding the other partitions…", file=sys.stderr)
    outcomes = await _outcomes(engine, entries, args.wait)
    for entry in entries:
        verb, now = outcomes.get(entry.key, ("applied", None))
        line = f"{verb}: p{entry.partition} {entry.stream_id} {entry.type} tenant {entry.tenant_id}"
        if now is not None and verb == "failed":
            line += f": {now.error}"
        elif verb == "pending":
            line += " (no projector applied it yet; it stays requested)"
        print(json.dumps({"action": verb, **asdict(now or entry)}) if args.json else line)
    counts = {v: sum(1 for o, _ in outcomes.values() if o == v) for v in ("failed", "pending")}
    applied = len(entries) - sum(counts.values())
    print(f"retry: {applied} applied, {counts['failed']} failed again, {counts['pending']} pending", file=sys.stderr)
    return 0 if applied == len(entries) else 1


async def _outcomes(
    engine: AsyncEngine, entries: list[Quarantined], wait_s: float
) -> dict[tuple[int, int, int], tuple[str, Quarantined]]:
    """Entries not applied (yet), keyed: ``failed`` (request cleared, still here) or ``pending``."""
    deadline = time.monotonic() + wait_s
    wanted = {e.key for e in entries}
    while True:
        async with engine.connect() as conn:
            left = {e.key: e for e in await quarantine.listing(conn, stream_ids=sorted({e.stream_id for e in entries}))
                    if e.key in wanted}
        outcomes = {k: ("pending" if e.retry_requested_at is not None else "failed", e) for k, e in left.items()}
        if all(o == "failed" for o, _ in outcomes.values()) or time.monotonic() >= deadline:
            return outcomes
        await asyncio.sleep(POLL_S)


def _print(entry: Quarantined, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**asdict(entry), "quarantined": iso(entry.quarantined_at)}))
        return
    requested = "  (retry requested)" if entry.retry_requested_at is not None else ""
    print(f"{iso(entry.quarantined_at)}  p{entry.partition}  {entry.stream_id}  {entry.type}  tenant {entry.tenant_id}"
          f"  aggregate {entry.aggregate_id}  {entry.body_bytes} bytes  retries {entry.retries}{requested}  "
          f"{entry.error[:300]}")
