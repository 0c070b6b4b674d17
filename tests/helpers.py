"""Test helpers: server URLs, polling instead of sleeping, and running real ``orq`` processes."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx

from tests.processes import OrqProcess

T = TypeVar("T")

REDIS_URL = os.environ.get("ORQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def mysql_url() -> str:
    return os.environ.get("ORQ_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")


async def mysql_available(url: str) -> bool:
    from shared.readmodel.db import create_engine

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


async def until_answering(
    url: str, server: asyncio.Task[Any] | OrqProcess, *, timeout: float = 15, message: str = "server answering"
) -> None:
    """GET ``url`` until it answers 200 (a server coming up), or time runs out; a ``server`` that has stopped
    meanwhile (a task done, a process exited) is named in the failure, with a process' output."""

    async def answers() -> None:
        if isinstance(server, asyncio.Task):
            assert not server.done(), server
        else:
            assert server.process.poll() is None, server.output()
        try:
            async with httpx.AsyncClient() as client:
                assert (await client.get(url)).status_code == 200
        except httpx.TransportError as exc:
            raise AssertionError(str(exc)) from exc

    await assert_eventually(answers, timeout=timeout, message=message)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def switchable_server() -> AsyncIterator[dict[str, Any]]:
    """A tiny HTTP server on loopback (a robot for ``http_request`` steps) answering ``state["status"]`` (500 until
    the test says otherwise) at ``state["url"]``; ``state["calls"]`` counts the requests it has answered."""
    state: dict[str, Any] = {"status": 500, "calls": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        state["calls"] += 1
        status = state["status"]
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state["url"] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/robot"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


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
