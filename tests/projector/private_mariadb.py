"""A private MariaDB server for tests that need server settings the shared one must keep (a small
``max_allowed_packet``, changed with ``SET GLOBAL``): its own datadir under the test's tmp dir, a free port.

Skipped with a reason when ``mariadbd`` is not installed (fails instead with ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.processes import stop_process

START_TIMEOUT_S = 60


class PrivateMariadb:
    """A private server: its port, SQL as root, and stop/start (same datadir and port) for outage drills."""

    def __init__(self, server: str, root: Path, port: int, max_allowed_packet: int) -> None:
        self.port = port
        self.root = root
        self._args = [
            server, "--no-defaults", f"--datadir={root / 'data'}", f"--port={port}", "--bind-address=127.0.0.1",
            f"--socket={root / 'mariadb.sock'}", f"--pid-file={root / 'mariadb.pid'}", "--user=root",
            "--skip-log-bin", f"--max-allowed-packet={max_allowed_packet}", "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M", "--performance-schema=OFF",
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> str:
        done = subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", f"-P{self.port}", "-N", "-e", statement],
                              capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"{statement!r} failed: {done.stderr}")
        return done.stdout

    def start(self) -> None:
        log = self.root / "server.log"
        with open(log, "ab") as out:
            self._process = subprocess.Popen(self._args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                self.sql("SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then wait; SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout=30)


@contextmanager
def private_mariadb(root: Path, *, max_allowed_packet: int) -> Iterator[PrivateMariadb]:
    """Install a datadir under ``root``, start ``mariadbd`` on a free port, stop it at the end."""
    server, installer = shutil.which("mariadbd") or _sbin("mariadbd"), shutil.which("mariadb-install-db")
    if server is None or installer is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but mariadbd / mariadb-install-db are not installed")
        pytest.skip("mariadbd not installed: tests needing a private MariaDB server are skipped")
    subprocess.run([installer, "--no-defaults", f"--datadir={root / 'data'}",
                    "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root"],
                   check=True, capture_output=True, timeout=120)
    running = PrivateMariadb(server, root, free_port(), max_allowed_packet)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None
