"""Keyset pagination: list endpoints answer ``{"items": [...], "next_cursor": str | null}``.

A cursor is the sort key of the last item served, base64url-encoded JSON: opaque to clients, stable under
concurrent inserts (no offsets), and cheap for the database (a range scan from the key).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from sqlalchemy import ColumnElement, Row, Select, Table, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from shared.infra.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Key = tuple[int, str]
R = TypeVar("R")
_key_decoder = msgspec.json.Decoder(tuple[int, str])


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: Key | None


def page_request(request: Request) -> PageRequest:
    """``limit`` (1..200, default 50) and ``cursor`` from the query string; bad values are a 422."""
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4) or not (
            1 <= int(raw_limit) <= MAX_LIMIT
        ):
            raise ValidationFailed(f"limit: must be an integer from 1 to {MAX_LIMIT}", field="limit")
        limit = int(raw_limit)
    raw_cursor = request.query_params.get("cursor")
    return PageRequest(limit, decode_cursor(raw_cursor) if raw_cursor else None)


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _key_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed("cursor: not a cursor this API gave out", field="cursor") from None


def after(sort: ColumnElement[int], tiebreak: ColumnElement[str], key: Key) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in ``ORDER BY sort DESC, tiebreak DESC``."""
    return or_(sort < key[0], and_(sort == key[0], tiebreak < key[1]))


def split_page(rows: Sequence[R], limit: int, key_of: Callable[[R], Key]) -> tuple[Sequence[R], str | None]:
    """The page out of ``limit + 1`` fetched rows, and the cursor to the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(key_of(page[-1]))


async def keyset_page(
    engine: AsyncEngine, query: Select[Any], page: PageRequest, sort: ColumnElement[int], tiebreak: ColumnElement[str]
) -> tuple[Sequence[Row[Any]], str | None]:
    """The page of ``query``'s rows (already filtered) that ``page`` asks for, newest first by (sort,
    tiebreak), and the cursor to the next one. ``sort`` and ``tiebreak`` must be among the selected columns
    (a computed sort key as a label): the cursor is read back from the last row."""
    if page.after is not None:
        query = query.where(after(sort, tiebreak, page.after))
    query = query.order_by(sort.desc(), tiebreak.desc()).limit(page.limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return split_page(rows, page.limit, lambda r: (r._mapping[sort], r._mapping[tiebreak]))


async def live_page(
    engine: AsyncEngine, table: Table, tenant_id: str, page: PageRequest, *conditions: ColumnElement[bool]
) -> tuple[Sequence[Row[Any]], str | None]:
    """A page of the tenant's live (not deleted) rows of ``table``, newest first, by (created_at, id)."""
    c = table.c
    query = select(table).where(c.tenant_id == tenant_id, c.deleted == false(), *conditions)
    return await keyset_page(engine, query, page, c.created_at, c.id)
