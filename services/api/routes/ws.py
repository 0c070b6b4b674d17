"""``WS /ws/events``: the tenant's events as JSON, replayed from ``since`` then live.

Query parameters: ``token`` (the tenant key, for browsers; or send ``Authorization: Bearer``), ``since``
(a stream id: replay every event after it, then go live), ``execution_id`` (only that execution's events),
``types`` (comma-separated tags, ``execution.*`` for a family). Each message is one event,
``{"id", "type", "tenant_id", "aggregate_id", "ts", "v", "data"}``, in log order; with ``batch=1`` each
message is instead a JSON array of the events that were ready together (far fewer frames for busy clients).

The connection is accepted, then closed before any event when the request is refused. Close codes:

==== ==========================================================================================
4400 bad query parameter (the reason names it)
4401 missing or invalid key
4403 the admin token (it acts on no tenant)
4410 ``since`` is older than the retained log: reload over REST, then reconnect without ``since``
4429 the client fell behind its buffer; reconnect with ``since=<the last id it received>``
1001 the server is stopping; reconnect (to any API process) with ``since``
1013 Redis is unavailable, or the tenant or server has its most subscribers; try again
==== ==========================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.api.auth import require_tenant
from services.api.context import ApiContext
from services.api.feed import (
    Position,
    Subscription,
    TypeFilter,
    position,
    replay,
    trimmed_after,
    valid_stream_id,
)
from services.api.ownership import MAX_ID_LENGTH
from shared.infra.errors import BadRequest, Forbidden, OrqError, Unauthorized

log = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_HISTORY_GONE = 4410
CLOSE_TOO_SLOW = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013

# A client that stopped reading cannot take even the close frame: give up on it after this long.
CLOSE_TIMEOUT_S = 10.0
MAX_TYPES = 50
# With ``batch=1``, at most this many events per message.
MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class FeedRequest:
    since: str | None
    execution_id: str | None
    types: TypeFilter | None
    batch: bool = False


_TOKEN = re.compile(r"(token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Masks ``token=<key>`` in log records: uvicorn logs each WebSocket's path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a for a in record.args):
            record.args = tuple(_TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_tokens_in_server_logs() -> None:
    """Install :class:`RedactTokens` on uvicorn's logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())


def _context(websocket: WebSocket) -> ApiContext:
    ctx: ApiContext = websocket.app.state.api
    return ctx


def _token(websocket: WebSocket) -> str:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    token = websocket.query_params.get("token", "").strip()
    if not token:
        raise Unauthorized("missing key: send 'Authorization: Bearer <api key>' or '?token=<api key>'")
    return token


def _as_request(websocket: WebSocket, token: str) -> Request:
    """The handshake as an HTTP request carrying the key as a bearer token: the API's one auth path."""
    scope = dict(websocket.scope)
    scope.update(type="http", method="GET", headers=[(b"authorization", f"Bearer {token}".encode())])
    return Request(scope)


def parse_request(websocket: WebSocket) -> FeedRequest:
    params = websocket.query_params
    since = params.get("since") or None
    if since is not None and not valid_stream_id(since):
        raise BadRequest("since: a stream id, '<ms>' or '<ms>-<seq>', each part at most 2^64 - 1", field="since")
    execution_id = params.get("execution_id") or None
    if execution_id is not None and (len(execution_id) > MAX_ID_LENGTH or not execution_id.isprintable()):
        raise BadRequest("execution_id: not an execution id", field="execution_id")
    types: TypeFilter | None = None
    raw_types = params.get("types")
    if raw_types:
        patterns = [t.strip() for t in raw_types.split(",") if t.strip()]
        if len(patterns) > MAX_TYPES:
            raise BadRequest(f"types: at most {MAX_TYPES}", field="types")
        if unknown := TypeFilter.unknown(patterns):
            raise BadRequest(f"types: unknown event type {unknown[0][:60]!r}", field="types")
        types = TypeFilter(patterns)
    batch = params.get("batch", "0")
    if batch not in ("0", "1", "true", "false"):
        raise BadRequest("batch: 1 or 0", field="batch")
    return FeedRequest(since, execution_id, types, batch in ("1", "true"))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # A close reason is at most 123 bytes.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, asyncio.TimeoutError):
        await asyncio.wait_for(websocket.close(code, reason.encode()[:123].decode(errors="ignore")), CLOSE_TIMEOUT_S)


def _refusal(exc: Exception) -> tuple[int, str]:
    match exc:
        case Unauthorized():
            return CLOSE_UNAUTHORIZED, exc.message
        case Forbidden():
            return CLOSE_FORBIDDEN, exc.message
        case OrqError() if exc.status in (400, 404, 422):
            return CLOSE_BAD_REQUEST, exc.message
        case OrqError() if exc.status == 429:  # too many subscribers: the feed's bound
            return CLOSE_TRY_AGAIN, exc.message
        case _:
            return CLOSE_TRY_AGAIN, "a backing store is unavailable, try again"


async def events(websocket: WebSocket) -> None:
    # Subscribed before the handshake completes: every event appended after the client's connect returns
    # is delivered, even without ``since``. A refusal is accepted, then closed, so browsers see the code.
    hub = _context(websocket).feed
    try:
        tenant = await require_tenant(_as_request(websocket, _token(websocket)))
        request = parse_request(websocket)
        sub = hub.subscription(tenant.id, execution_id=request.execution_id, types=request.types)
        until = await hub.subscribe(sub)
    except (OrqError, RedisError) as exc:
        await websocket.accept()
        await _close(websocket, *_refusal(exc))
        return
    sender = watcher = None
    try:
        await websocket.accept()
        sender = asyncio.create_task(_send(websocket, sub, request, until))
        watcher = asyncio.create_task(_until_disconnect(websocket))
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        hub.unsubscribe(sub)
        tasks = [t for t in (sender, watcher) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await task


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice at once when it goes away."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


class _Writer:
    """Sends what a subscriber has not had yet: one event per message, or (``batch``) a JSON array of them."""

    def __init__(self, websocket: WebSocket, sub: Subscription, batch: bool) -> None:
        self.websocket = websocket
        self.sub = sub
        self.batch = batch

    async def write(self, items: list[tuple[Position, str, str]]) -> None:
        fresh = [item for item in items if self.sub.fresh(item[0])]
        if not self.batch:
            for pos, event_id, message in fresh:
                await self.websocket.send_text(message)
                self.sub.sent(pos, event_id)
            return
        for at in range(0, len(fresh), MAX_BATCH):
            chunk = fresh[at : at + MAX_BATCH]
            await self.websocket.send_text("[" + ",".join(message for _, _, message in chunk) + "]")
            self.sub.sent(chunk[-1][0], chunk[-1][1])


async def _send(websocket: WebSocket, sub: Subscription, request: FeedRequest, until: str) -> None:
    redis = _context(websocket).redis
    writer = _Writer(websocket, sub, request.batch)
    since = request.since
    # Nothing at or before the starting point is sent (live delivery and the replay overlap).
    start = since if since is not None else until
    sub.sent(position(start), start)
    if since is not None:
        try:
            if await trimmed_after(redis, sub, since):
                await _close(websocket, CLOSE_HISTORY_GONE, "since is older than the retained log; reload")
                return
            async for page in replay(redis, sub, since, until):
                if sub.overflowed:
                    break
                await writer.write(page)
        except RedisError as exc:
            await _close(websocket, *_refusal(exc))
            return
    while batch := await sub.next_batch():
        await writer.write(batch)
    if sub.overflowed:
        log.info("feed: dropped a slow subscriber of tenant %s at %s", sub.tenant_id, sub.last_id)
        await _close(websocket, CLOSE_TOO_SLOW, f"too slow; reconnect with since={sub.last_id}")
    else:
        await _close(websocket, CLOSE_GOING_AWAY, "server stopping; reconnect with since")


CLOSE_CODES = {
    CLOSE_BAD_REQUEST: "bad query parameter",
    CLOSE_UNAUTHORIZED: "missing or invalid key",
    CLOSE_FORBIDDEN: "the admin token (a tenant key is needed)",
    CLOSE_HISTORY_GONE: "since is older than the retained log: reload over REST, reconnect without since",
    CLOSE_TOO_SLOW: "fell behind its buffer: reconnect with since=<last id received>",
    CLOSE_GOING_AWAY: "server stopping: reconnect with since",
    CLOSE_TRY_AGAIN: "a backing store is unavailable: try again",
}

# OpenAPI cannot describe a WebSocket: the document carries it as an extension.
OPENAPI = {
    "/ws/events": {
        "summary": "The tenant's events as JSON, replayed from `since`, then live",
        "query": {
            "token": "the tenant key (or send `Authorization: Bearer <key>`)",
            "since": "stream id: replay every event after it, then go live",
            "execution_id": "only this execution's events",
            "types": "comma-separated event types; `execution.*` for a family",
            "batch": "1: each message is a JSON array of events (default: one event per message)",
        },
        "message": {"id": "stream id", "type": "event type", "tenant_id": "", "aggregate_id": "", "ts": "ms",
                    "v": "schema version", "data": "the event's payload"},
        "close_codes": {str(code): text for code, text in CLOSE_CODES.items()},
    }
}

routes = [WebSocketRoute("/ws/events", events)]
