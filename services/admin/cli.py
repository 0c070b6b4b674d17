"""The operator's ``orq`` subcommands: ``status``, ``dlq list|retry|purge``, ``maintenance``, ``events tail``
(``quarantine list|retry`` is the projector's own: services/projector/quarantine_command.py).

Argument definitions only; each command's work lives in its own module and is imported when it runs.
"""

from __future__ import annotations

import argparse
import asyncio

from shared.infra.settings import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="consumer groups, lag, pending and DLQ size per partition")
    status.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    dlq = sub.add_parser("dlq", help="list, retry or purge dead-lettered executions in bulk, by filter")
    dlq.add_argument("action", choices=["list", "retry", "purge"])
    dlq.add_argument("--tenant", help="only this tenant's")
    dlq.add_argument("--workflow", help="only this workflow's")
    dlq.add_argument("--error", help="only those whose error contains this text (case-insensitive)")
    dlq.add_argument("--since", help="dead-lettered at or after (ISO 8601, e.g. 2026-05-01T00:00:00Z)")
    dlq.add_argument("--until", help="dead-lettered before (ISO 8601)")
    dlq.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    dlq.add_argument("--all", action="store_true", help="retry/purge without any filter")
    dlq.add_argument("--dry-run", action="store_true", help="show what retry/purge would do")
    dlq.add_argument("--json", action="store_true", help="JSON lines")

    maintenance = sub.add_parser("maintenance", help="trim logs, cap DLQs, check idempotency TTLs (once)")
    maintenance.add_argument("--dry-run", action="store_true", help="show what it would do, change nothing")
    maintenance.add_argument("--json", action="store_true")

    events = sub.add_parser("events", help="the event log, decoded")
    events.add_argument("action", choices=["tail"])
    events.add_argument("--partition", type=int, action="append", help="only this partition (repeatable)")
    events.add_argument("--tenant", help="only this tenant's events")
    events.add_argument("--type", dest="types", action="append", help="only this type or prefix (repeatable)")
    events.add_argument("--since", default="$", help="stream id to start after (0: from the start; $: new only)")
    events.add_argument("--last", type=int, default=0, help="first show the last N events of each partition")
    events.add_argument("--no-follow", action="store_true", help="stop at the end of the log instead of waiting")
    events.add_argument("--max", type=int, default=0, help="stop after this many events (0: never)")


ADMIN_COMMANDS = frozenset({"status", "dlq", "maintenance", "events"})


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one admin command; returns the process exit code."""
    match args.command:
        case "status":
            from services.admin.status import status

            return asyncio.run(status(settings, as_json=args.json))
        case "dlq":
            from services.admin.dlq import dlq_command

            return asyncio.run(dlq_command(settings, args))
        case "maintenance":
            from services.admin.status import maintenance

            return asyncio.run(maintenance(settings, dry_run=args.dry_run, as_json=args.json))
        case "events":
            from services.admin.events import tail

            return asyncio.run(tail(settings, args))
    raise ValueError(args.command)
