"""``orq``: one command line for every service. Wiring only: each service lives in ``services/<name>``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.admin.cli import ADMIN_COMMANDS
from services.admin.cli import add_commands as add_admin_commands
from services.projector.quarantine_command import add_command as add_quarantine_command
from services.robot.cli import add_command as add_robot_command
from shared.infra.errors import ConfigError, OrqError
from shared.infra.settings import DEV_DATA_DIR, DEV_SETTINGS_FILE, Settings, load_settings, with_dev_settings
from shared.infra.tracing import configure_tracing, shutdown_tracing
from shared.service.runtime import configure_logging, run_until_signalled


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orq", description="Orquesta workflow orchestrator")
    parser.add_argument("--log-level", default=os.environ.get("ORQ_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("ORQ_LOG_FORMAT", "text"))
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="HTTP API and WebSocket feed")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=_api_workers, default=os.environ.get("ORQ_API_WORKERS", "1"),
                     help="API processes on the one port, each a whole API (default: ORQ_API_WORKERS, else 1)")
    api.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)  # started by --workers N
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
    add_quarantine_command(sub)
    add_robot_command(sub)
    return parser


def _api_workers(value: str) -> int:
    from services.api.server import MAX_WORKERS

    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"a number of processes from 1 to {MAX_WORKERS}, not {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        settings = load_settings(_environment(args.command))
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


# Commands that reach a deployment rather than serve one: run from the folder of an ``orq dev``, they use its
# settings file (``.orq/dev.json``, or ``$ORQ_DEV_DIR/dev.json``) for whatever the environment does not set.
_CLIENT_COMMANDS = ADMIN_COMMANDS | {"quarantine", "replay"}


def _dev_folder() -> Path:
    return Path(os.environ.get("ORQ_DEV_DIR") or DEV_DATA_DIR)


def _environment(command: str) -> dict[str, str]:
    """The environment the settings are built from: ``os.environ``, completed from ``orq dev``'s settings file for
    the client commands; says on stderr which Redis and database a client command uses, and where they came from."""
    env = dict(os.environ)
    if command not in _CLIENT_COMMANDS:
        return env
    path = _dev_folder() / DEV_SETTINGS_FILE
    env, taken = with_dev_settings(env, path)
    if taken:
        from orquesta.dev import running_dev

        if running_dev(path.parent) is None:
            raise ConfigError(f"{path} is left by an orq dev that is no longer running; start `orq dev` again "
                              "(or delete the file, or set ORQ_REDIS_URL and ORQ_DATABASE_URL)")
    redis_from = "from " + str(path) if "ORQ_REDIS_URL" in taken else "from ORQ_REDIS_URL" if env.get(
        "ORQ_REDIS_URL") else "default"
    database_from = "from " + str(path) if "ORQ_DATABASE_URL" in taken else "from ORQ_DATABASE_URL" if env.get(
        "ORQ_DATABASE_URL") else "default"
    defaults = Settings()
    print(f"orq: redis {env.get('ORQ_REDIS_URL') or defaults.redis_url} ({redis_from}), database "
          f"{env.get('ORQ_DATABASE_URL') or defaults.database_url} ({database_from})", file=sys.stderr)
    if not env.get("ORQ_DATABASE_URL"):
        Path(DEV_DATA_DIR).mkdir(exist_ok=True)  # the default SQLite file lives there (git-ignored)
    return env


async def _replay(settings: Settings, *, show_progress: bool) -> int:
    """``orq replay``; against a running ``orq dev`` (whose settings it uses), with that instance's projector
    paused meanwhile (a live projector holds the partition locks replay needs)."""
    from orquesta.dev import projector_paused, running_dev
    from services.projector.replay import replay

    folder = _dev_folder()
    dev = running_dev(folder)
    if dev is None or dev.get("redis_url") != settings.redis_url:
        return await replay(settings, show_progress=show_progress)
    print(f"orq: pausing the projector of orq dev (pid {dev['pid']}) during the replay", file=sys.stderr)
    async with projector_paused(folder):
        return await replay(settings, show_progress=show_progress)


def _dispatch(args: argparse.Namespace, settings: Settings) -> None:
    if args.command in ADMIN_COMMANDS:
        from services.admin.cli import run as run_admin

        sys.exit(run_admin(args, settings))
    match args.command:
        case "quarantine":
            from services.projector.quarantine_command import quarantine_command

            sys.exit(asyncio.run(quarantine_command(settings, args)))
        case "api" if args.workers > 1 and not args.as_worker:
            from services.api.server import serve_workers, worker_command

            command = worker_command(args.host, args.port, args.log_level, args.log_format)
            run_until_signalled(lambda stop: serve_workers(stop, args.workers, command, args.host, args.port))
        case "api":
            from services.api.server import serve as serve_api

            run_until_signalled(lambda stop: serve_api(settings, stop, host=args.host, port=args.port,
                                                       worker=args.as_worker))
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
            from orquesta.dev import serve_dev

            run_until_signalled(lambda stop: serve_dev(settings, stop, host=args.host, port=args.port,
                                                       data_dir=args.data_dir))
        case "robot":
            from services.robot.cli import run as run_robot

            run_robot(args, settings)
        case "replay":
            count = asyncio.run(_replay(settings, show_progress=not args.no_progress))
            print(f"replayed {count} events")


if __name__ == "__main__":
    main()
