"""Transport limits of the API server that uvicorn does not set itself (DESIGN §12).

- **Request head**: the request line and headers together at most :data:`MAX_HEAD_BYTES` (64 KiB) → 431.
  Counted exactly by :class:`HeadLimit` (ASGI), and bounded while still arriving by :class:`GuardedHttpTools`,
  so a client cannot make the server buffer an 8 MiB header before it is refused.
- **Stalled clients**: a request head must arrive whole within :data:`STALL_TIMEOUT_S` (30 s) of its first
  byte (and a new connection must start one within that time); a body must not pause longer than that
  between two reads. Otherwise the client gets 408 and the connection is closed (only closed when it never
  sent a byte). Time the app spends before reading the body does not count (reading is paused then).

Refusals are answered like every API error (``{"error": {"code", "message"}}``) with ``Connection: close``;
the connection stops reading, and is closed once the client stops sending or after :data:`LINGER_S`, so the
client sees the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

KIB = 1024
MAX_HEAD_BYTES = 64 * KIB
STALL_TIMEOUT_S = 30.0
LINGER_S = 2.0
_LINE_OVERHEAD = 4  # ": " and CRLF of every header line


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


_HEAD_TOO_LARGE = _error(
    "headers_too_large", f"the request line and headers are over {MAX_HEAD_BYTES} bytes (64 KiB) together"
)
_TIMED_OUT = _error(
    "request_timeout", f"the request did not arrive: no progress for {STALL_TIMEOUT_S:.0f} s; send it again"
)


def head_size(scope: Scope) -> int:
    """Bytes of the request line and headers as they were sent (give or take the method and version)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return size + sum(len(name) + len(value) + _LINE_OVERHEAD for name, value in scope["headers"])


class HeadLimit:
    """ASGI middleware: a request whose line and headers exceed :data:`MAX_HEAD_BYTES` gets 431 unread."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEAD_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and head_size(scope) > self.max_bytes:
            await send({"type": "http.response.start", "status": 431, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(_HEAD_TOO_LARGE)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": _HEAD_TOO_LARGE})
            return
        await self.app(scope, receive, send)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded: head bytes buffered before the head is complete, and stalls.

    The parser's callbacks say where a request is: between ``on_message_begin`` and ``on_headers_complete``
    its head is arriving, then its body until ``on_message_complete``; after that the app has it all and no
    limit here applies (a long poll may take its time).
    """

    max_head_bytes = MAX_HEAD_BYTES
    stall_timeout_s = STALL_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._message_ended = False  # a message completed while feeding the current chunk
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a new connection must start its request in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a refusal: drain what the client still sends
            return
        if self._in_body:
            self._arm()  # the body moves: the stall clock starts again
        self._message_ended = False
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # All of this chunk is head unless a previous request ended inside it (then the share is unknown,
            # and the exact count at the end of the head, HeadLimit, decides).
            if not self._message_ended:
                self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, _HEAD_TOO_LARGE)

    def eof_received(self) -> None:
        if self._refused:  # the client has read the refusal and is done sending
            self.transport.close()
        super().eof_received()

    def handle_websocket_upgrade(self) -> None:
        self._in_head = self._in_body = False
        self._disarm()  # the WebSocket protocol takes over the connection, with its own pings and limits
        super().handle_websocket_upgrade()

    # --- parser callbacks -------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._in_body, self._head_bytes = True, False, 0
        self._arm()  # the whole head within the timeout: no re-arming while it trickles in

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._arm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = self._in_body = False
        self._message_ended = True
        self._disarm()
        super().on_message_complete()

    # --- limits -----------------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.stall_timeout_s, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self._in_body else None
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._arm()  # the app has not read what came, or not asked for the body yet: not the client's stall
        elif self._in_head or (cycle is not None and not cycle.response_started):
            self._refuse(408, _TIMED_OUT)
        else:  # a new connection that never sent a byte, or a response already under way
            self.transport.close()

    def _refuse(self, status: int, body: bytes) -> None:
        """Answer ``status`` and stop: no app sees the request; the connection lingers, then closes."""
        self._disarm()
        self._refused = True
        self._in_head = self._in_body = False
        if self.cycle is not None and not self.cycle.response_complete:
            # The app is waiting for a body that will not come: it gets a disconnect, never a late reply.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
