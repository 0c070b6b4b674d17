"""``orq``: one command line for every service. Wiring only: each service lives in ``services/<name>``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from services.admin.cli import ADMIN_COMMANDS
from services.admin.cli import add_commands as add_admin_commands
from shared.errors import ConfigError, OrqError
from shared.runtime import configure_logging, run_until_signalled
from shared.settings import Settings, load_settings
from shared.tracing import configure_tracing, shutdown_tracing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orq", description="Orquesta workflow orchestrator")
    parser.add_argument("--log-level", default=os.environ.get("ORQ_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("ORQ_LOG_FORMAT", "text"))
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="HTTP API and WebSocket feed")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    sub.add_parser("executor", help="run workflow executions")
    sub.add_parser("projector", help="project events into SQL tables")
    sub.add_parser("trigger", help="fire triggers")
    sub.add_parser("notifier", help="send notifications (webhooks, email) and run the scheduled maintenance")
    dev = sub.add_parser("dev", help="everything in one process on an embedded Redis and SQLite")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".orq")
    replay = sub.add_parser("replay", help="rebuild every projection from the event archive and the streams")
    replay.add_argument("--no-progress", action="store_true")
    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        settings = load_settings()
        configure_tracing(settings.otel_endpoint, args.command)
        _dispatch(args, settings)
    except ConfigError as exc:
        print(f"orq: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except OrqError as exc:  # a refused command (e.g. replay while a projector runs): say why, no traceback
        print(f"orq: {exc.message}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown_tracing()


def _dispatch(args: argparse.Namespace, settings: Settings) -> None:
    if args.command in ADMIN_COMMANDS:
        from services.admin.cli import run as run_admin

        sys.exit(run_admin(args, settings))
    match args.command:
        case "api":
            from services.api.server import serve as serve_api

            run_until_signalled(lambda stop: serve_api(settings, stop, host=args.host, port=args.port))
        case "executor":
            from services.executor.worker import serve as serve_executor

            run_until_signalled(lambda stop: serve_executor(settings, stop))
        case "projector":
            from services.projector.projector import serve as serve_projector

            run_until_signalled(lambda stop: serve_projector(settings, stop))
        case "trigger":
            from services.trigger.service import serve as serve_trigger

            run_until_signalled(lambda stop: serve_trigger(settings, stop))
        case "notifier":
            from services.notifier.service import serve as serve_notifier

            run_until_signalled(lambda stop: serve_notifier(settings, stop))
        case "dev":
            from shared.dev import serve_dev

            run_until_signalled(lambda stop: serve_dev(settings, stop, host=args.host, port=args.port,
                                                       data_dir=args.data_dir))
        case "replay":
            from services.projector.replay import replay

            count = asyncio.run(replay(settings, show_progress=not args.no_progress))
            print(f"replayed {count} events")


if __name__ == "__main__":
    main()
