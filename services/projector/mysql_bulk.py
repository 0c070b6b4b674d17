"""Multi-row upserts for MySQL/MariaDB with inline literals: one statement per table (and size chunk).

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

from shared import schema

# What pymysql's escape_string does (backslash escapes), as one translate table.
_BACKSLASH = str.maketrans(
    {"\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z", "'": "\\'", '"': '\\"', "\\": "\\\\"}
)
_QUOTES_ONLY = str.maketrans({"'": "''"})
_json = msgspec.json.Encoder()
_NO_PARAMETERS = {"no_parameters": True}  # literal '%' in values must not be taken for placeholders


Literal = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class _Shape:
    head: str
    tail: str
    values: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # a row's values, in column order
    literals: tuple[Literal, ...]  # one converter per column


class MysqlBulk:
    """Writes rows of SQLAlchemy tables as multi-row ``INSERT … [ON DUPLICATE KEY UPDATE]`` statements."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, bool], _Shape] = {}
        self._escape: dict[int, str] | None = None
        self._max_chars = 4 * 1024 * 1024
        self._quoted: Callable[[str], str] = _unprepared

    async def write(self, conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]], upsert: bool) -> None:
        """Insert ``rows`` (full rows, every column); on a duplicate key update every other column if ``upsert``."""
        await self.prepare(conn)
        await self.execute(conn, self.render(table, rows, upsert))

    async def prepare(self, conn: AsyncConnection) -> None:
        """Learn how the server wants strings escaped (once); :meth:`render` needs it."""
        if self._escape is None:
            await self._read_server(conn)

    def render(self, table: Table, rows: Sequence[Mapping[str, Any]], upsert: bool) -> list[str]:
        """The statements writing ``rows``: plain strings, so later changes to the rows do not affect them."""
        if self._escape is None:
            raise RuntimeError("MysqlBulk.prepare() first")
        if not rows:
            return []
        shape = self._shape(table, upsert)
        values_of, literals = shape.values, shape.literals
        statements: list[str] = []
        chunk: list[str] = []
        size = 0
        for row in rows:
            values = "(" + ",".join(map(operator.call, literals, values_of(row))) + ")"
            chunk.append(values)
            size += len(values)
            if size >= self._max_chars:
                statements.append(shape.head + ",".join(chunk) + shape.tail)
                chunk, size = [], 0
        if chunk:
            statements.append(shape.head + ",".join(chunk) + shape.tail)
        return statements

    def render_archive(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """:meth:`render` for ``event_archive`` rows (one per event, the bulk of every batch), formatted whole."""
        if self._escape is None:
            raise RuntimeError("MysqlBulk.prepare() first")
        quoted = self._quoted
        head = self._shape(schema.event_archive, False).head
        statements: list[str] = []
        chunk: list[str] = []
        size = 0
        for r in rows:
            values = (
                f"({r['partition']:d},{r['ms']:d},{r['seq']:d},{quoted(r['type'])},{quoted(r['tenant_id'])},"
                f"{quoted(r['aggregate_id'])},X'{bytes(r['body']).hex()}')"
            )
            chunk.append(values)
            size += len(values)
            if size >= self._max_chars:
                statements.append(head + ",".join(chunk))
                chunk, size = [], 0
        if chunk:
            statements.append(head + ",".join(chunk))
        return statements

    async def execute(self, conn: AsyncConnection, statements: Sequence[str]) -> None:
        for statement in statements:
            await conn.exec_driver_sql(statement, execution_options=_NO_PARAMETERS)

    async def _read_server(self, conn: AsyncConnection) -> None:
        row = (await conn.exec_driver_sql("SELECT @@SESSION.sql_mode, @@SESSION.max_allowed_packet")).one()
        sql_mode, max_packet = list(row)
        escape = self._escape = _QUOTES_ONLY if "NO_BACKSLASH_ESCAPES" in str(sql_mode).upper() else _BACKSLASH
        special = re.compile("'" if escape is _QUOTES_ONLY else r"[\x00\n\r\x1a'\"\\]").search

        def quoted(value: str) -> str:
            # Most values (ids, statuses) need no escaping; searching is much cheaper than translating.
            return "'" + (value.translate(escape) if special(value) else value) + "'"

        self._quoted = quoted
        # Hex doubles blobs and escapes may double text: keep each statement well inside the packet limit.
        self._max_chars = max(64 * 1024, int(max_packet) // 4)

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
            shape = self._shapes[key] = _Shape(head, tail, values, literals)
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


def _unprepared(value: str) -> str:
    raise RuntimeError("MysqlBulk.prepare() first")
