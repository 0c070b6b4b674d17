"""``ORQ_SQL_TIMEOUT_S`` (DESIGN §12): a MariaDB that stops answering (SIGSTOP of a private server, never the
shared one) makes SQL endpoints of a real ``orq api`` answer 503 with ``Retry-After`` within the timeout,
and they recover once it answers again; on SQLite, an endless statement is interrupted at the timeout."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from shared.infra.settings import load_settings
from shared.readmodel.db import SqlTimeout, create_engine
from tests.helpers import REDIS_URL, free_port
from tests.processes import OrqProcess, orq_env, orq_processes, wait_ready
from tests.projector.private_mariadb import private_mariadb

SQL_TIMEOUT_S = 1
ADMIN = "sql-timeout-admin"


def test_the_default_sql_timeout_is_5_s() -> None:
    assert load_settings({}).sql_timeout_s == 5
    assert load_settings({"ORQ_SQL_TIMEOUT_S": "0.5"}).sql_timeout_s == 0.5


@pytest.fixture
def stopped_sql(tmp_path: Path, redis: object) -> Iterator[tuple[str, int]]:
    """A real ``orq api`` on a private MariaDB; yields (its base URL, the server's pid to SIGSTOP)."""
    with private_mariadb(tmp_path, max_allowed_packet=16 * 1024 * 1024) as server:
        assert server.port != 3306, "never the shared server"
        server.sql("CREATE DATABASE orq")
        pid = int((tmp_path / "mariadb.pid").read_text())
        port = free_port()
        env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=server.url("orq"), ORQ_ADMIN_TOKEN=ADMIN,
                      ORQ_SQL_TIMEOUT_S=str(SQL_TIMEOUT_S))
        with orq_processes() as procs:
            procs.append(OrqProcess(["api", "--port", str(port)], env, tmp_path / "api.log"))
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, procs[0])
            try:
                yield base, pid
            finally:
                os.kill(pid, signal.SIGCONT)


def test_a_stopped_mariadb_gets_503_within_the_sql_timeout(stopped_sql: tuple[str, int]) -> None:
    base, pid = stopped_sql
    with httpx.Client(base_url=base, timeout=30) as client:
        created = client.post("/api/tenants", json={"name": "acme", "plan": "pro"},
                              headers={"Authorization": f"Bearer {ADMIN}"})
        assert created.status_code == 201, created.text
        tenant = {"Authorization": f"Bearer {created.json()['api_key']}"}
        assert client.get("/api/executions", headers=tenant).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            for path in ("/api/executions", "/api/executions", "/api/workflows"):
                started = time.monotonic()
                r = client.get(path, headers=tenant)
                elapsed = time.monotonic() - started
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert elapsed < SQL_TIMEOUT_S + 1.5, (path, elapsed)
                assert int(r.headers["Retry-After"]) >= 1
                error = r.json()["error"]
                assert error["code"] == "unavailable" and "ORQ_SQL_TIMEOUT_S" in error["message"], error
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while (r := client.get("/api/executions", headers=tenant)).status_code != 200:
            assert time.monotonic() < deadline, ("no recovery", r.status_code, r.text)
            time.sleep(0.2)


async def test_a_long_sqlite_statement_is_interrupted_at_the_timeout(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url, timeout_s=0.5)
    endless = text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
                   "SELECT count(*) FROM c")
    try:
        started = time.monotonic()
        with pytest.raises(SqlTimeout, match="ORQ_SQL_TIMEOUT_S"):
            async with engine.connect() as conn:
                await conn.execute(endless)
        assert time.monotonic() - started < 1.5
        async with engine.connect() as conn:  # the engine goes on serving
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()

