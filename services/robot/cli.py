"""``orq robot``: argument definitions and the start; the robot itself is ``runner.py``."""

from __future__ import annotations

import argparse
import logging
import os

from shared.infra.errors import ConfigError
from shared.infra.settings import Settings
from shared.service.runtime import run_until_signalled

KEY_VARIABLE = "ORQ_ROBOT_KEY"


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    robot = sub.add_parser("robot", help="the reference robot: run the `runs_on` steps of its pool on this machine")
    robot.add_argument("--url", required=True, help="base URL of the Orquesta API, e.g. https://orq.example.com")
    robot.add_argument("--key", default=os.environ.get(KEY_VARIABLE),
                       help=f"the robot key from POST /api/robots (default ${KEY_VARIABLE}, which keeps it out "
                            "of the process list)")
    robot.add_argument("--pool", help="refuse to start (exit 2) unless the key's robot is of this pool")
    robot.add_argument("--concurrency", type=int, default=1, help="tasks run at the same time (default 1)")
    robot.add_argument("--grace", type=float, default=None,
                       help="seconds a running task may take to finish after SIGTERM (default "
                            "ORQ_SHUTDOWN_GRACE_SECONDS, 30); then it is given back")


def run(args: argparse.Namespace, settings: Settings) -> None:
    from services.robot.runner import RobotOptions, serve

    if not args.key:
        raise ConfigError(f"orq robot needs a robot key: --key or ${KEY_VARIABLE}")
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    # Quiet: a robot's log is one line per task, not one per HTTP request (heartbeats, long polls).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    options = RobotOptions(url=args.url, key=args.key, pool=args.pool, concurrency=args.concurrency,
                           grace_s=settings.shutdown_grace_s if args.grace is None else args.grace)
    run_until_signalled(lambda stop: serve(options, stop))
