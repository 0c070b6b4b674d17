"""Which failures set an event aside (its data) and which are retried (the database): real errors from real
servers, classified by ``services.projector.failures``."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.helpers import free_port


async def raised(action: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await action()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def is_data_error(exc: BaseException) -> bool:
    from services.projector.failures import is_data_error as classify

    return classify(exc)


async def run_sql(engine: AsyncEngine, *statements: str, params: dict[str, Any] | None = None) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement), params or {})


async def test_errors_of_the_data_set_an_event_aside(engine: AsyncEngine) -> None:
    await run_sql(engine, "DROP TABLE IF EXISTS probe", "CREATE TABLE probe (id INTEGER PRIMARY KEY, n BIGINT)")
    # A value out of the column's range: MariaDB "Out of range" (DataError), SQLite cannot bind it.
    out_of_range = await raised(lambda: run_sql(engine, "INSERT INTO probe VALUES (1, :n)", params={"n": 2**64 - 1}))
    # A constraint (a duplicate key) the statement breaks.
    await run_sql(engine, "INSERT INTO probe VALUES (2, 1)")
    duplicate = await raised(lambda: run_sql(engine, "INSERT INTO probe VALUES (2, 1)"))
    assert is_data_error(out_of_range), repr(out_of_range)
    assert is_data_error(duplicate), repr(duplicate)
    # What the fold raises on an event it cannot apply, and a row refused before it is sent.
    from services.projector.mysql_bulk import RowTooLarge

    assert is_data_error(TypeError("Encoding objects of type msgspec.msgpack.Ext is unsupported"))
    assert is_data_error(RowTooLarge("execution_steps", ("x", 0), 20_000_000, 16_777_216))


async def test_errors_of_the_database_are_retried(engine: AsyncEngine, database_url: str) -> None:
    # A table that is not there is the operator's problem (a schema change, a restore), never an event's.
    missing = await raised(lambda: run_sql(engine, "SELECT * FROM no_such_table"))
    assert not is_data_error(missing), repr(missing)
    for error in (ConnectionResetError(104, "reset"), TimeoutError(), MemoryError()):
        assert not is_data_error(error)


async def test_locked_sqlite_is_retried(sqlite_url: str) -> None:
    path = sqlite_url.split("///", 1)[1]
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE busy (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    engine = create_async_engine(sqlite_url, connect_args={"timeout": 0.1})
    try:
        locked = await raised(lambda: run_sql(engine, "INSERT INTO busy VALUES (1)"))
        assert "locked" in str(locked) and not is_data_error(locked)
    finally:
        other.execute("ROLLBACK")
        other.close()
        await engine.dispose()


@pytest.mark.mysql
async def test_an_unreachable_mariadb_is_retried() -> None:
    engine = create_async_engine(f"mysql+aiomysql://root@127.0.0.1:{free_port()}/test")
    try:
        refused = await raised(lambda: run_sql(engine, "SELECT 1"))
    finally:
        await engine.dispose()
    assert "Can't connect" in str(refused) and not is_data_error(refused)


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    from services.projector.failures import backoff_s

    delays = [backoff_s(n) for n in range(8)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays) and max(delays) == 30.0
