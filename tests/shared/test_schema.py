"""Schema set-up as services do it on start: together, on a new SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3

from sqlalchemy import inspect

from shared.readmodel.db import create_engine, create_schema
from shared.readmodel.schema import metadata


async def test_schema_set_up_waits_out_another_connection_on_a_new_sqlite_file(sqlite_url: str) -> None:
    """Turning a new SQLite file to WAL while another connection holds a lock fails at once with "database
    is locked" (no busy timeout applies). ``orq dev`` starts every service in one process on one new file,
    so one service's set-up can meet another's connection: it must wait and try again, not fail."""
    path = sqlite_url.split("///", 1)[1]
    other = sqlite3.connect(path, isolation_level=None)  # not yet WAL, like a sibling service mid-start
    other.execute("CREATE TABLE busy (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO busy VALUES (1)")
    service = create_engine(sqlite_url)
    try:
        setting_up = asyncio.create_task(create_schema(service))
        await asyncio.sleep(0.3)  # the set-up meets the lock meanwhile
        assert not setting_up.done(), setting_up.exception()
        other.execute("COMMIT")
        await setting_up
        async with service.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert {table.name for table in metadata.sorted_tables} <= tables
    finally:
        other.close()
        await service.dispose()
