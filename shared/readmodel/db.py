"""SQL engine creation and schema set-up, for MariaDB/MySQL (aiomysql) and SQLite (aiosqlite).

An engine made with ``timeout_s`` (the API's, ``ORQ_SQL_TIMEOUT_S``) bounds every round trip: connecting
(including the server's handshake, which aiomysql's ``connect_timeout`` does not cover), checking a
connection out of the pool, each statement, commit, rollback and close. A round trip past it raises
:class:`SqlTimeout` and the connection is dropped rather than reused (its reply may still come). A server
that is down or stopped (SIGSTOP, a full disk, a lock) thus costs a request at most the timeout, never a
hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.readmodel.schema import metadata

SCHEMA_ATTEMPTS = 8
SCHEMA_RACES = ("already exists", "Duplicate", "database is locked")
SQLITE_BUSY_TIMEOUT_S = 30
T = TypeVar("T")


class SqlTimeout(Exception):
    """SQL did not answer within the engine's timeout (``ORQ_SQL_TIMEOUT_S``); the connection was dropped."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"SQL did not answer within {timeout_s:g} s (ORQ_SQL_TIMEOUT_S)")
        self.timeout_s = timeout_s


def create_engine(url: str, *, timeout_s: float | None = None) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so API reads do not block the projector.

    With ``timeout_s``, every round trip is bounded by it (see the module's docstring); without, the
    engine waits as long as the server takes (the projector's large batches)."""
    if url.startswith("sqlite"):
        busy_s = SQLITE_BUSY_TIMEOUT_S if timeout_s is None else timeout_s
        engine = create_async_engine(url, connect_args={"timeout": busy_s})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    elif timeout_s is None:
        engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_recycle=3600, pool_pre_ping=True)
    else:
        engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_recycle=3600, pool_pre_ping=True,
                                     pool_timeout=timeout_s, connect_args={"connect_timeout": max(1, round(timeout_s))})
    return engine if timeout_s is None else TimedEngine(engine.sync_engine, timeout_s)


class TimedEngine(AsyncEngine):
    """An engine whose connections bound every round trip by ``timeout_s``."""

    __slots__ = ("timeout_s",)

    def __init__(self, sync_engine: Engine, timeout_s: float) -> None:
        super().__init__(sync_engine)
        self.timeout_s = timeout_s

    def connect(self) -> TimedConnection:
        return TimedConnection(self)


class TimedConnection(AsyncConnection):
    """A connection whose round trips raise :class:`SqlTimeout` past the engine's timeout."""

    __slots__ = ("_timeout_s", "_interrupts")

    def __init__(self, engine: TimedEngine) -> None:
        super().__init__(engine)
        self._timeout_s = engine.timeout_s
        self._interrupts: set[asyncio.Task[None]] = set()

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        stopper = self._interrupt_at_deadline()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call()
        except TimeoutError:
            # The server may still answer on this connection later: it must never serve another query.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout_s):
                    await super().invalidate()
            raise SqlTimeout(self._timeout_s) from None
        finally:
            if stopper is not None:
                stopper.cancel()

    def _interrupt_at_deadline(self) -> asyncio.TimerHandle | None:
        """SQLite runs a statement in aiosqlite's thread, which a cancelled await does not stop (and the clean-up
        after the cancel would wait for it): interrupt the statement itself at the deadline."""
        sync = self.sync_connection
        if sync is None or sync.dialect.name != "sqlite" or sync.invalidated or sync.closed:
            return None
        try:
            driver = sync.connection.driver_connection
        except SQLAlchemyError:  # e.g. a transaction left to roll back: nothing runs on it to interrupt
            return None
        if driver is None:
            return None

        def interrupt() -> None:
            task = asyncio.get_running_loop().create_task(driver.interrupt())
            self._interrupts.add(task)
            task.add_done_callback(self._interrupts.discard)

        return asyncio.get_running_loop().call_later(self._timeout_s, interrupt)

    async def start(self, is_ctxmanager: bool = False) -> TimedConnection:
        await self._bounded(lambda: super(TimedConnection, self).start(is_ctxmanager))
        return self

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(lambda: super(TimedConnection, self).execute(*args, **kwargs))

    async def exec_driver_sql(self, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(lambda: super(TimedConnection, self).exec_driver_sql(*args, **kwargs))

    async def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(lambda: super(TimedConnection, self).run_sync(*args, **kwargs))

    async def commit(self) -> None:
        await self._bounded(super().commit)

    async def rollback(self) -> None:
        await self._bounded(super().rollback)

    async def close(self) -> None:
        await self._bounded(super().close)


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
