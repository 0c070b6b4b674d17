"""Running a service: logging, signals and the stop event every serve() honours."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

Serve = Callable[[asyncio.Event], Awaitable[None]]


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def run_until_signalled(serve: Serve) -> None:
    """Run ``serve(stop)``; SIGTERM or SIGINT sets ``stop`` and the service drains and returns."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
