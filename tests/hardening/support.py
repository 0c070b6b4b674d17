"""Helpers for the hardening tests: a local HTTP server that records what reaches it, the events of one
execution, and a WebSocket close code read off a raw connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TypeVar

from redis.asyncio import Redis

from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import EventBase, decode
from tests.helpers import assert_eventually, http_server

E = TypeVar("E", bound=EventBase)


@dataclass
class Recorder:
    """A local HTTP server's port and the requests it received (method, path)."""

    port: int = 0
    status: int = 200
    location: str = ""
    set_cookie: str = ""
    hits: list[tuple[str, str]] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/probe"


@contextmanager
def recording_server(status: int = 200, location: str = "", set_cookie: str = "",
                     body: bytes = b'{"ok": true}') -> Iterator[Recorder]:
    """A real HTTP server on 127.0.0.1 answering every request with ``status`` (and ``Location``,
    ``Set-Cookie``), recording each request and the ``Cookie`` it came with."""
    state = Recorder(status=status, location=location, set_cookie=set_cookie)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length:
                self.rfile.read(length)
            state.hits.append((self.command, self.path))
            state.cookies.append(self.headers.get("Cookie", ""))
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            if state.set_cookie:
                self.send_header("Set-Cookie", state.set_cookie)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as port:
        state.port = port
        yield state


async def events_of(redis: Redis, partition: int, execution_id: str) -> list[EventBase]:
    records = records_of(await redis.xrange(keys.log(partition)))  # type: ignore[arg-type]
    return [e for e in (decode(r.body, r.id) for r in records) if e.aggregate_id == execution_id]


async def wait_for_event(redis: Redis, partition: int, execution_id: str, kind: type[E],
                         timeout: float = 15) -> E:
    """The first event of type ``kind`` of the execution, once it is in the log."""

    async def check() -> E:
        found = [e for e in await events_of(redis, partition, execution_id) if isinstance(e, kind)]
        assert found, f"no {kind.__name__} yet"
        return found[0]

    return await assert_eventually(check, timeout=timeout, message=f"{kind.__name__} of {execution_id}")
