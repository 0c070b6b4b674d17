"""Test helpers: server URLs, polling instead of sleeping, and running real ``orq`` processes."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

T = TypeVar("T")

REDIS_URL = os.environ.get("ORQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def mysql_url() -> str:
    return os.environ.get("ORQ_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")


async def mysql_available(url: str) -> bool:
    from shared.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect():
            return True
    except Exception:
        return False
    finally:
        await engine.dispose()


async def assert_eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Call ``check`` until it returns without raising AssertionError (and a truthy value), or time runs out."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result is None or result:
                return result
            last = AssertionError(f"{message or 'condition'} returned {result!r}")
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {message}") from last
        await asyncio.sleep(interval)


async def assert_always(
    check: Callable[[], Awaitable[object]], duration: float, interval: float = 0.1, message: str = ""
) -> None:
    """Call ``check`` for ``duration`` seconds; each call must pass (for what must *stay* true, e.g. a cancelled
    execution staying cancelled while another executor looks at it)."""
    deadline = time.monotonic() + duration
    while True:
        try:
            await check()
        except AssertionError as exc:
            raise AssertionError(f"stopped being true: {message}") from exc
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 (a free port, served from a thread) for as long as the block runs; its
    port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
