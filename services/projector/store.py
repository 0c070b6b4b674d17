"""SQL side of the projection: load the rows a batch touches, upsert what changed, archive, checkpoint.

Everything here runs inside a transaction the caller opens, so rows, archive and checkpoint commit or
roll back together. Writes are one ``executemany`` per table (dialect-specific upserts: MySQL
``INSERT … ON DUPLICATE KEY UPDATE``, SQLite ``INSERT … ON CONFLICT DO UPDATE``), never a round trip per row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import Table, and_, delete, insert, select, text, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from services.projector.mysql_bulk import MysqlBulk
from shared.infra.clock import stream_id_parts
from shared.log.consumer import Record
from shared.log.events import EVENT_TYPES, Event, decode
from shared.readmodel import schema
from shared.readmodel.db import is_sqlite
from shared.readmodel.projection import EXECUTIONS, STEPS, TABLES, TENANTS, USAGE, WORKFLOWS, Needs, Projection

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "main"
# SQLite has no packet limit (a value may reach a billion bytes): quarantined bodies are stored in 16 MiB pieces.
SQLITE_BODY_CHUNK = 16 * 1024 * 1024
# Keeps each IN (…) list well under SQLite's bound-parameter limit.
IN_CHUNK = 900

TABLE_OBJECTS: dict[str, Table] = {t.name: t for t in schema.PROJECTION_TABLES}
assert set(TABLE_OBJECTS) == set(TABLES), "the read model's projection and schema disagree on the tables"

_raw = msgspec.msgpack.Decoder(dict[str, Any])


def _repair_aiomysql_bytes() -> None:
    """Let aiomysql send ``bytes`` again (the archive's bodies) under PyMySQL >= 1.2.

    aiomysql <= 0.3.2 escapes bytes with ``pymysql.converters.escape_bytes_prefixed``, which PyMySQL 1.2
    replaced with a string, so every bytes parameter fails with "'str' object is not callable". Only
    patched when broken; the proper fix is a dependency pin (see services/projector/README.md).
    """
    try:
        import aiomysql.connection
        import pymysql.converters
    except ImportError:  # pragma: no cover - MySQL support not installed
        return
    if not callable(getattr(aiomysql.connection, "escape_bytes_prefixed", None)):
        aiomysql.connection.escape_bytes_prefixed = pymysql.converters.escape_bytes


@dataclass(slots=True)
class Writes:
    """Row writes rendered from a projection: SQL text (MySQL) or statement and row copies (SQLite)."""

    statements: list[str] = field(default_factory=list)
    batches: list[tuple[Insert, list[dict[str, Any]]]] = field(default_factory=list)
    rows: int = 0


class Fenced(Exception):
    """The checkpoint moved under us: another projector applied this partition (we lost its lock)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A stream entry, its event (None when it cannot be decoded or its type is unknown) and archive row."""

    record: Record
    event: Event | None
    archive: dict[str, Any]


def decode_records(p: int, records: Iterable[Record]) -> list[Decoded]:
    """Decode entries for folding and build their archive rows; bad entries are kept (archived) and logged."""
    out = []
    for record in records:
        event: Event | None = None
        try:
            event = decode(record.body, record.id)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if record.type in EVENT_TYPES:
                log.error("undecodable %s entry %s in partition %d: %s", record.type, record.id, p, exc)
            else:
                log.info("ignoring entry %s of unknown type %r in partition %d", record.id, record.type, p)
        out.append(Decoded(record, event, archive_row(p, record, event)))
    return out


def archive_row(p: int, record: Record, event: Event | None) -> dict[str, Any]:
    ms, seq = stream_id_parts(record.id)
    if event is not None:
        tenant_id, aggregate_id = event.tenant_id, event.aggregate_id
    else:
        tenant_id, aggregate_id = _ids_of_raw(record.body)
    return {
        "partition": p,
        "ms": ms,
        "seq": seq,
        "type": record.type[:60],
        "tenant_id": tenant_id[:36],
        "aggregate_id": aggregate_id[:64],
        "body": record.body,
    }


def _ids_of_raw(body: bytes) -> tuple[str, str]:
    try:
        raw = _raw.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", ""
    tenant_id, aggregate_id = raw.get("tenant_id", ""), raw.get("aggregate_id", "")
    return (tenant_id if isinstance(tenant_id, str) else "", aggregate_id if isinstance(aggregate_id, str) else "")


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    """Statements for one engine's dialect, built once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sqlite = is_sqlite(engine)
        if not self.sqlite:
            _repair_aiomysql_bytes()
        self._upserts = {name: self._upsert(table) for name, table in TABLE_OBJECTS.items()}
        self._archive = insert(schema.event_archive)
        self._bulk = None if self.sqlite else MysqlBulk()

    def _upsert(self, table: Table) -> Insert:
        keys = {c.name for c in table.primary_key.columns}
        if self.sqlite:
            lite = sqlite.insert(table)
            return lite.on_conflict_do_update(
                index_elements=[table.c[k] for k in keys],
                set_={c.name: lite.excluded[c.name] for c in table.columns if c.name not in keys},
            )
        my = mysql.insert(table)
        return my.on_duplicate_key_update({c.name: my.inserted[c.name] for c in table.columns if c.name not in keys})

    # --- rows -----------------------------------------------------------------------------------------------
    async def load(self, conn: AsyncConnection, projection: Projection, needs: Needs) -> None:
        """Read into ``projection`` the existing rows ``needs`` names (executions come with all their steps)."""
        await self._load_by(conn, projection, TENANTS, schema.tenants.c.id, needs.tenants)
        await self._load_by(conn, projection, WORKFLOWS, schema.workflows.c.id, needs.workflows)
        # Steps first: an execution held in memory always has its steps there too.
        await self._load_by(conn, projection, STEPS, schema.execution_steps.c.execution_id, needs.executions)
        await self._load_by(conn, projection, EXECUTIONS, schema.executions.c.id, needs.executions)
        if needs.usage:
            tenants = sorted({t for t, _ in needs.usage})
            months = sorted({m for _, m in needs.usage})
            for chunk in _chunks(tenants):
                stmt = select(schema.usage_monthly).where(
                    schema.usage_monthly.c.tenant_id.in_(chunk), schema.usage_monthly.c.month.in_(months)
                )
                rows = (await conn.execute(stmt)).mappings().all()
                projection.load(USAGE, (r for r in rows if (r["tenant_id"], r["month"]) in needs.usage))

    async def _load_by(
        self, conn: AsyncConnection, projection: Projection, table: str, column: Any, keys: set[str]
    ) -> None:
        for chunk in _chunks(sorted(keys)):
            rows = (await conn.execute(select(TABLE_OBJECTS[table]).where(column.in_(chunk)))).mappings().all()
            projection.load(table, rows)

    async def write(self, conn: AsyncConnection, projection: Projection) -> int:
        """Upsert every changed row (one statement per table) and mark them clean; returns how many."""
        await self.prepare(conn)
        writes = self.render(projection)
        await self.execute(conn, writes)
        return writes.rows

    async def prepare(self, conn: AsyncConnection) -> None:
        """What :meth:`render` needs to know about the server (once, and again after :meth:`forget_server`)."""
        if self._bulk is not None:
            await self._bulk.prepare(conn)

    def forget_server(self) -> None:
        """A transaction failed: the next connection may be to a server with other settings; read them again."""
        if self._bulk is not None:
            self._bulk.forget_server()

    async def session_is_current(self, conn: AsyncConnection) -> bool:
        """Whether ``conn``'s session has the server's current ``max_allowed_packet`` (a session copies it
        when it connects; a pool may hold sessions older than an operator's ``SET GLOBAL``)."""
        if self._bulk is None:
            return True
        async with conn.begin():
            self._bulk.forget_server()
            await self._bulk.prepare(conn)
        return not self._bulk.stale_session

    async def body_chunk_bytes(self, conn: AsyncConnection) -> int:
        """How much of a body one quarantine row may hold: a quarter of MySQL's packet (escaping may double
        it, and the row has other columns), so each piece fits one statement."""
        if self._bulk is None:
            return SQLITE_BODY_CHUNK
        await self._bulk.prepare(conn)
        return max(1024, self._bulk.max_packet // 4)

    def render(self, projection: Projection) -> Writes:
        """Snapshot the changed rows as the writes to run (later folds do not change them); marks them clean."""
        writes = Writes()
        for table, rows in projection.changes().items():
            if self._bulk is not None:
                writes.statements += self._bulk.render(TABLE_OBJECTS[table], rows, upsert=True)
            else:
                writes.batches.append((self._upserts[table], [dict(row) for row in rows]))
            writes.rows += len(rows)
        projection.mark_clean()
        return writes

    async def execute(self, conn: AsyncConnection, writes: Writes) -> None:
        """Run writes rendered by :meth:`render` (in the caller's transaction)."""
        if self._bulk is not None:
            await self._bulk.execute(conn, writes.statements)
        for stmt, rows in writes.batches:
            await conn.execute(stmt, rows)

    async def archive(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        if self._bulk is not None:
            await self._bulk.prepare(conn)
            await self._bulk.execute(conn, self._bulk.render_archive(rows))
        elif rows:
            await conn.execute(self._archive, list(rows))

    # --- checkpoints ----------------------------------------------------------------------------------------
    async def checkpoint(self, conn: AsyncConnection, p: int) -> str | None:
        """The last stream id applied for partition ``p`` (None before the first batch)."""
        stmt = select(schema.projection_checkpoints.c.last_id).where(
            schema.projection_checkpoints.c.name == CHECKPOINT_NAME,
            schema.projection_checkpoints.c.partition == p,
        )
        value = (await conn.execute(stmt)).scalar_one_or_none()
        return None if value is None else str(value)

    async def move_checkpoint(self, conn: AsyncConnection, p: int, old: str | None, new: str, now_ms: int) -> None:
        """Compare-and-set the checkpoint from ``old`` to ``new``; :class:`Fenced` if someone else moved it."""
        table = schema.projection_checkpoints
        if old is None:
            exists = await self.checkpoint(conn, p)
            if exists is not None:
                raise Fenced(f"partition {p}: checkpoint appeared at {exists}")
            try:
                await conn.execute(
                    insert(table).values(name=CHECKPOINT_NAME, partition=p, last_id=new, updated_at=now_ms)
                )
            except IntegrityError:  # another projector inserted it first
                raise Fenced(f"partition {p}: checkpoint created concurrently") from None
            return
        result = await conn.execute(
            update(table)
            .where(and_(table.c.name == CHECKPOINT_NAME, table.c.partition == p, table.c.last_id == old))
            .values(last_id=new, updated_at=now_ms)
        )
        if result.rowcount != 1:
            raise Fenced(f"partition {p}: checkpoint is no longer {old}")

    # --- replay ---------------------------------------------------------------------------------------------
    async def truncate(self, conn: AsyncConnection) -> None:
        """Empty every projection table (not the archive, not the checkpoints)."""
        for table in schema.PROJECTION_TABLES:
            if self.sqlite:
                await conn.execute(delete(table))
            else:
                await conn.execute(text(f"TRUNCATE TABLE `{table.name}`"))
