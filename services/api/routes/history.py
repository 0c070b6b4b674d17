"""An execution's history: its events, its log lines, and the execution as it stood at a point (``as_of``).

``GET /api/executions/{id}/events`` and ``…/logs`` page through the execution's events (``shared.readmodel.history``:
the event archive, then the log's unprojected tail) with an opaque cursor, like every list. Events are served
in the WebSocket feed's shape (``shared.log.events.to_json``, the feed's own encoder); log lines in the shape of
the ``execution_logs`` rows. ``GET /api/executions/{id}?as_of=`` folds the events up to the point with the
projection's own code and renders the rows with the detail route's view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
from sqlalchemy import Row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses, views
from services.api.auth import require_tenant
from services.api.commands import lookup
from services.api.context import ApiContext, context
from services.api.feed import valid_stream_id
from services.api.pagination import decode_cursor, encode_cursor
from services.api.schemas import Execution, LogLine
from shared.domain.aggregates import TenantState
from shared.infra.errors import NotFound, ValidationFailed
from shared.log.events import ExecutionLog, to_json
from shared.readmodel.history import LOG_TYPE, MAX_PART, START, Point, Span, fold, read_page

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_AS_OF_LENGTH = 64
LEVEL_LENGTH = 10  # the execution_logs column (the projection clips to it too)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    limit: int
    after: Point


def history_page(request: Request) -> HistoryPage:
    """``limit`` (1..1000, default 100) and ``cursor`` from the query string; bad values are a 422."""
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 5) or not (
            1 <= int(raw_limit) <= MAX_LIMIT
        ):
            raise ValidationFailed(f"limit: must be an integer from 1 to {MAX_LIMIT}", field="limit")
        limit = int(raw_limit)
    raw_cursor = request.query_params.get("cursor")
    return HistoryPage(limit, _point_of_cursor(raw_cursor) if raw_cursor else START)


def _cursor(point: Point | None) -> str | None:
    # The list endpoints' cursor encoding (a key of an int and a string), with the stream id's two parts.
    return None if point is None else encode_cursor((point[0], str(point[1])))


def _point_of_cursor(cursor: str) -> Point:
    ms, seq = decode_cursor(cursor)
    if not (0 <= ms <= MAX_PART and seq.isascii() and seq.isdigit() and len(seq) <= 20 and int(seq) <= MAX_PART):
        raise ValidationFailed("cursor: not a cursor this API gave out", field="cursor")
    return ms, int(seq)


async def _owned_span(request: Request) -> tuple[ApiContext, Span]:
    """The execution's span of the log, once it is known to be the caller's (else a 404)."""
    tenant: TenantState = await require_tenant(request)
    ctx = context(request)
    execution_id = request.path_params["id"]
    await lookup(ctx, tenant, execution_id)
    return ctx, Span(tenant.id, tenant.partition, execution_id)


async def execution_events(request: Request) -> Response:
    ctx, span = await _owned_span(request)
    page = history_page(request)
    found = await read_page(ctx.redis, ctx.engine, replace(span, after=page.after), page.limit)
    items = [msgspec.Raw(to_json(event)) for event in found.events]
    return responses.json({"items": items, "next_cursor": _cursor(found.next)})


async def execution_logs(request: Request) -> Response:
    ctx, span = await _owned_span(request)
    page = history_page(request)
    found = await read_page(ctx.redis, ctx.engine, replace(span, after=page.after, only_type=LOG_TYPE), page.limit)
    items = [_log_line(event) for event in found.events if isinstance(event, ExecutionLog)]
    return responses.json({"items": items, "next_cursor": _cursor(found.next)})


def _log_line(event: ExecutionLog) -> LogLine:
    return LogLine(event_id=event.id, ts=event.ts, step_index=event.step_index, level=event.level[:LEVEL_LENGTH],
                   message=event.message)


# --- as_of ------------------------------------------------------------------------------------------------------
def as_of_point(raw: str) -> Point:
    """The last log position ``as_of`` includes: a stream id (``<ms>`` alone means all of that millisecond)
    or an ISO-8601 time (every event appended by that millisecond; a time without an offset is UTC)."""
    if raw and len(raw) <= MAX_AS_OF_LENGTH:
        if valid_stream_id(raw):
            head, _, seq = raw.partition("-")
            return int(head), int(seq) if seq else MAX_PART
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            ms = (moment - _EPOCH) // _MS
            return (ms, MAX_PART) if ms >= 0 else START  # before 1970 is before every event
    raise ValidationFailed(
        "as_of: a stream id ('<ms>' or '<ms>-<seq>') or an ISO-8601 time such as 2026-01-31T12:00:00Z",
        field="as_of",
    )


async def execution_as_of(request: Request, raw_as_of: str) -> Response:
    """``GET /api/executions/{id}?as_of=``: the detail route's body, folded from the events up to the point."""
    ctx, span = await _owned_span(request)
    until = as_of_point(raw_as_of)
    folded = await fold(ctx.redis, ctx.engine, replace(span, until=until))
    if folded.execution is None:
        raise NotFound(f"execution {span.execution_id} had not been queued at {raw_as_of}")
    return responses.json(render(folded.execution, folded.steps))


@dataclass(frozen=True, slots=True)
class _FoldedRow:
    """A folded row where the views expect a SQL row: they read ``row._mapping`` only."""

    _mapping: Mapping[str, Any]


def render(execution: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Execution:
    """The detail route's body from folded rows, by the detail route's own view."""
    return views.execution(_row(execution), [_row(step) for step in steps])


def _row(values: Mapping[str, Any]) -> Row[Any]:
    return cast("Row[Any]", _FoldedRow(values))


routes = [
    Route("/api/executions/{id}/events", execution_events, methods=["GET"]),
    Route("/api/executions/{id}/logs", execution_logs, methods=["GET"]),
]
