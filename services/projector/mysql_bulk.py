"""Multi-row upserts for MySQL/MariaDB with inline literals: one statement per table (and size chunk).

Statements are split by their size in bytes so none exceeds the server's ``max_allowed_packet`` (read from
the connection, again after every connection failure): only a single row too large on its own can fail, and
it fails here, as :class:`RowTooLarge`, before anything is sent. Sending it would not give a clean error:
the server answers 1153 and drops the connection, so the client sees "Lost connection" (2013), exactly as
in a real outage, and the projector could not tell the two apart.

``executemany`` through aiomysql becomes the same multi-row ``INSERT … VALUES (…), (…)`` but escapes every
parameter in Python through several layers of calls (and SQLAlchemy processes each row before that):
at tens of thousands of values per second that was most of the projector's CPU. Here each value goes
through one small function. Escaping follows the server: backslash escapes, or only doubled quotes when
``sql_mode`` has ``NO_BACKSLASH_ESCAPES``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import JSON, Boolean, Integer, LargeBinary, String, Table
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from shared.readmodel import schema

# What pymysql's escape_string does (backslash escapes), as one translate table.
_BACKSLASH = str.maketrans(
    {"\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z", "'": "\\'", '"': '\\"', "\\": "\\\\"}
)
_QUOTES_ONLY = str.maketrans({"'": "''"})
_json = msgspec.json.Encoder()
_NO_PARAMETERS = {"no_parameters": True}  # literal '%' in values must not be taken for placeholders


Literal = Callable[[Any], str]

# Room for the command byte and whatever the protocol adds to a statement within one packet.
PACKET_SLACK = 1024
# Multi-row statements aim at a quarter of the packet (4 MiB under MariaDB's default 16 MiB), at most 16 MiB:
# large enough to amortise round trips, small enough to keep the server's and our memory in check.
TARGET_MIN, TARGET_MAX = 64 * 1024, 16 * 1024 * 1024


class RowTooLarge(Exception):
    """One row needs a statement larger than the session's ``max_allowed_packet``: it cannot be written.

    ``stale_session``: the server's global limit is larger than this session's (sessions copy it when they
    connect, and an operator raised it since): a new connection may write the row after all.
    """

    def __init__(self, table: str, key: Any, size: int, limit: int, stale_session: bool = False) -> None:
        super().__init__(f"a row of {table} (key {key!r}) needs a {size:,}-byte statement; the server's "
                         f"max_allowed_packet allows {limit + PACKET_SLACK:,} bytes"
                         + (" on this (older) session" if stale_session else ""))
        self.table, self.key, self.size, self.limit = table, key, size, limit
        self.stale_session = stale_session


@dataclass(frozen=True, slots=True)
class _Shape:
    table: str
    head: str
    tail: str
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # a row's values, in column order
    literals: tuple[Literal, ...]  # one converter per column
    key: Callable[[Mapping[str, Any]], Any]  # a row's primary key (to name a row too large)


class MysqlBulk:
    """Writes rows of SQLAlchemy tables as multi-row ``INSERT … [ON DUPLICATE KEY UPDATE]`` statements."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, bool], _Shape] = {}
        self._escape: dict[int, str] | None = None
        self._stale = False
        self.max_packet = 16 * 1024 * 1024
        self.stale_session = False  # the server's global max_allowed_packet is larger than the session's
        self._limit = self.max_packet - PACKET_SLACK  # bytes one statement may have
        self._target = TARGET_MIN  # bytes a multi-row statement aims at
        self._quoted: Callable[[str], str] = _unprepared

    async def write(self, conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]], upsert: bool) -> None:
        """Insert ``rows`` (full rows, every column); on a duplicate key update every other column if ``upsert``."""
        await self.prepare(conn)
        await self.execute(conn, self.render(table, rows, upsert))

    async def prepare(self, conn: AsyncConnection) -> None:
        """Learn how the server wants strings escaped and how large a statement may be (once, and again after
        :meth:`forget_server`); :meth:`render` needs it."""
        if self._escape is None or self._stale:
            await self._read_server(conn)

    def forget_server(self) -> None:
        """Read the server's settings again at the next :meth:`prepare`: called when a connection failed, as
        its replacement may see another ``max_allowed_packet`` (an operator lowered it meanwhile)."""
        self._stale = True

    def render(self, table: Table, rows: Sequence[Mapping[str, Any]], upsert: bool) -> list[str]:
        """The statements writing ``rows``: plain strings, so later changes to the rows do not affect them."""
        if self._escape is None:
            raise RuntimeError("MysqlBulk.prepare() first")
        if not rows:
            return []
        shape = self._shape(table, upsert)
        values_of, literals = shape.values, shape.literals
        chunks = _Chunks(shape, self._limit, self._target, self.stale_session)
        for row in rows:
            chunks.add("(" + ",".join(map(operator.call, literals, values_of(row))) + ")", row)
        return chunks.statements()

    def render_archive(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """:meth:`render` for ``event_archive`` rows (one per event, the bulk of every batch), formatted whole."""
        if self._escape is None:
            raise RuntimeError("MysqlBulk.prepare() first")
        quoted = self._quoted
        chunks = _Chunks(self._shape(schema.event_archive, False), self._limit, self._target, self.stale_session)
        for r in rows:
            chunks.add(
                f"({r['partition']:d},{r['ms']:d},{r['seq']:d},{quoted(r['type'])},{quoted(r['tenant_id'])},"
                f"{quoted(r['aggregate_id'])},X'{bytes(r['body']).hex()}')",
                r,
            )
        return chunks.statements()

    async def execute(self, conn: AsyncConnection, statements: Sequence[str]) -> None:
        for statement in statements:
            await conn.exec_driver_sql(statement, execution_options=_NO_PARAMETERS)

    async def _read_server(self, conn: AsyncConnection) -> None:
        row = (await conn.exec_driver_sql(
            "SELECT @@SESSION.sql_mode, @@SESSION.max_allowed_packet, @@GLOBAL.max_allowed_packet")).one()
        sql_mode, max_packet, global_packet = list(row)
        previous = self._escape
        escape = self._escape = _QUOTES_ONLY if "NO_BACKSLASH_ESCAPES" in str(sql_mode).upper() else _BACKSLASH
        special = re.compile("'" if escape is _QUOTES_ONLY else r"[\x00\n\r\x1a'\"\\]").search

        def quoted(value: str) -> str:
            # Most values (ids, statuses) need no escaping; searching is much cheaper than translating.
            return "'" + (value.translate(escape) if special(value) else value) + "'"

        self._quoted = quoted
        if previous is not None and previous is not escape:
            self._shapes.clear()  # their literals quote the old way
        self.max_packet = int(max_packet)
        self.stale_session = int(global_packet) > self.max_packet
        self._limit = self.max_packet - PACKET_SLACK
        self._target = min(self._limit, max(TARGET_MIN, min(TARGET_MAX, self.max_packet // 4)))
        self._stale = False

    def _shape(self, table: Table, upsert: bool) -> _Shape:
        key = (table.name, upsert)
        shape = self._shapes.get(key)
        if shape is None:
            names = [c.name for c in table.columns]
            keys = {c.name for c in table.primary_key.columns}
            head = f"INSERT INTO `{table.name}` ({','.join(f'`{c}`' for c in names)}) VALUES "
            updates = ",".join(f"`{c}`=VALUES(`{c}`)" for c in names if c not in keys)
            tail = f" ON DUPLICATE KEY UPDATE {updates}" if upsert and updates else ""
            getter = operator.itemgetter(*names)
            values = getter if len(names) > 1 else lambda row: (getter(row),)
            literals = tuple(self._literal_for(c.type) for c in table.columns)
            key_of = operator.itemgetter(*[c.name for c in table.primary_key.columns])
            shape = self._shapes[key] = _Shape(table.name, head, tail, values, literals, key_of)
        return shape

    def _literal_for(self, column_type: TypeEngine[Any]) -> Literal:
        """One converter per column, chosen by its SQL type (values are what the projection holds)."""
        quoted = self._quoted

        def text(value: Any) -> str:
            return "NULL" if value is None else quoted(str(value))

        if isinstance(column_type, JSON):
            return lambda value: quoted(_json.encode(value).decode())
        if isinstance(column_type, Boolean):
            return lambda value: "NULL" if value is None else ("1" if value else "0")
        if isinstance(column_type, Integer):  # BigInteger too
            return lambda value: "NULL" if value is None else f"{value:d}"
        if isinstance(column_type, LargeBinary):
            return lambda value: "NULL" if value is None else "X'" + bytes(value).hex() + "'"
        if isinstance(column_type, String):  # Text too
            return text
        raise TypeError(f"no SQL literal for columns of type {column_type!r}")


class _Chunks:
    """Rendered rows gathered into statements of at most ``target`` bytes (one row alone: ``limit``)."""

    def __init__(self, shape: _Shape, limit: int, target: int, stale_session: bool) -> None:
        self.shape = shape
        self.stale_session = stale_session
        self.fixed = len(shape.head) + len(shape.tail)  # ASCII: column names only
        self.limit = limit
        self.target = target
        self.done: list[str] = []
        self.chunk: list[str] = []
        self.size = self.fixed

    def add(self, values: str, row: Mapping[str, Any]) -> None:
        # Bytes, not characters: the statement travels as UTF-8. Most rows are ASCII, where they are equal.
        size = len(values) if values.isascii() else len(values.encode())
        if self.fixed + size > self.limit:
            raise RowTooLarge(self.shape.table, self.shape.key(row), self.fixed + size, self.limit, self.stale_session)
        if self.chunk and self.size + 1 + size > self.target:
            self.flush()
        self.size += size + (1 if self.chunk else 0)
        self.chunk.append(values)

    def flush(self) -> None:
        self.done.append(self.shape.head + ",".join(self.chunk) + self.shape.tail)
        self.chunk, self.size = [], self.fixed

    def statements(self) -> list[str]:
        if self.chunk:
            self.flush()
        return self.done


def _unprepared(value: str) -> str:
    raise RuntimeError("MysqlBulk.prepare() first")
