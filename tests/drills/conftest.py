"""Fixtures of the fault drills: private servers that a drill may stop, kill and restart.

Drills that leave the servers alone use the shared Redis through the ``redis`` fixture (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.drills.servers import PrivateMariaDB, PrivateRedis


def _missing(what: str) -> None:
    # The house rule for servers: skipped locally with the reason, a failure in CI.
    if IN_CI:
        pytest.fail(f"CI=true but {what}")
    pytest.skip(what)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A started ``redis-server`` of this test alone (AOF, ``appendfsync always``); stopped at the end."""
    server = PrivateRedis(tmp_path / "redis")
    if server.binary is None:
        _missing("no redis-server on PATH for the Redis restart drills")
    try:
        await server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_mariadb(tmp_path: Path) -> AsyncIterator[PrivateMariaDB]:
    """A started ``mariadbd`` of this test alone with an empty database ``orq``; stopped at the end."""
    server = PrivateMariaDB(tmp_path / "mariadb")
    if not server.available:
        _missing("no mariadbd / mariadb-install-db for the MariaDB outage drill")
    try:
        server.install()
        await server.start()
        await server.execute("CREATE DATABASE orq")
        yield server
    finally:
        server.stop()
