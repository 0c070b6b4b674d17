"""SQL engine creation and schema set-up, for MariaDB/MySQL (aiomysql) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.schema import metadata

SCHEMA_ATTEMPTS = 8
SCHEMA_RACES = ("already exists", "Duplicate", "database is locked")


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so API reads do not block the projector."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_recycle=3600, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def is_sqlite(engine: AsyncEngine | Engine) -> bool:
    return engine.dialect.name == "sqlite"


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables and indexes, and add columns a newer version declares (idempotent).

    Services starting together race to create the same tables; the loser of a race sees "already exists"
    (or, on SQLite, "database is locked": a schema change there does not wait for the busy timeout) and
    simply looks again.
    """
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, checkfirst=True)
                await conn.run_sync(_add_missing_columns)
            return
        except (OperationalError, ProgrammingError) as exc:
            if not any(race in str(exc) for race in SCHEMA_RACES) or attempt == SCHEMA_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))


def _add_missing_columns(conn: Connection) -> None:
    """The upgrade path for additive schema changes: new indexes are built, and a new column gets its
    declared default on old rows."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn, checkfirst=False)
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            default = getattr(column.default, "arg", None)
            if default is not None and not callable(default):
                ddl += f" NOT NULL DEFAULT {int(default) if isinstance(default, bool) else repr(default)}"
            conn.execute(text(ddl))
