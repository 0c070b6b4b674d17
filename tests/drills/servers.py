"""Private ``redis-server`` and ``mariadbd`` processes for drills that stop, kill or restart a server.

The shared servers (Redis on 6379, MariaDB on 3306) serve every other test run on the machine: a drill that
takes a server down starts its own, on a free port, with its data in the test's tmp folder, and restarts it
on the same data (what an operator's restart does).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomysql
from redis.asyncio import Redis

from tests.helpers import free_port
from tests.processes import stop_process

START_TIMEOUT_S = 30.0


def _signal(process: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it lingers; SIGCONT first, since a stopped process never handles SIGTERM."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    stop_process(process, timeout=15)


async def _wait_until(ready: Callable[[], Awaitable[object]], what: str, process: subprocess.Popen[bytes],
                      log: Path) -> None:
    """Poll ``ready()`` until it answers; fail at once (with the server's log) if the server exited."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        try:
            await ready()
            return
        except Exception:  # refused, or still loading its data: not yet
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{what} did not answer within {START_TIMEOUT_S}s:\n{_tail(log)}") from None
            await asyncio.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateRedis:
    """A ``redis-server`` with AOF on and ``appendfsync always``: every write it answered is on disk, so a
    ``kill -9`` and restart lose nothing that was acknowledged."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    async def start(self) -> None:
        """Start (or start again, on the same port and data) and wait until it answers with its data loaded."""
        assert self.binary is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)

        async def ping() -> None:
            await client.ping()

        try:
            await _wait_until(ping, "redis-server", self.process, self.log_path)
        finally:
            await client.aclose()

    def kill9(self) -> None:
        _signal(self.process, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.process)


class PrivateMariaDB:
    """A ``mariadbd`` on a datadir of its own (root without a password, grant tables skipped)."""

    def __init__(self, base: Path) -> None:
        self.install_db = shutil.which("mariadb-install-db")
        self.binary = shutil.which("mariadbd") or (
            "/usr/sbin/mariadbd" if os.access("/usr/sbin/mariadbd", os.X_OK) else None)
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def available(self) -> bool:
        return self.install_db is not None and self.binary is not None

    @property
    def log_path(self) -> Path:
        return self.base / "mariadb.err"

    def url(self, database: str) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{database}"

    def install(self) -> None:
        """Initialise the datadir (system tables); small redo log, the drills write little."""
        assert self.install_db is not None
        self.base.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [self.install_db, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db",
             "--auth-root-authentication-method=normal", "--innodb-log-file-size=8M", *self._user()],
            capture_output=True, timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout.decode()}\n{done.stderr.decode()}")

    def _user(self) -> list[str]:
        # mariadbd refuses to run as root unless told so; as another user the option is not needed.
        return ["--user=root"] if os.geteuid() == 0 else []

    async def start(self) -> None:
        """Start (or start again, on the same datadir: InnoDB recovers) and wait until it answers."""
        assert self.binary is not None
        self.process = subprocess.Popen(
            [self.binary, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.base / 'mariadb.sock'}",
             f"--pid-file={self.base / 'mariadb.pid'}", f"--log-error={self.log_path}", "--skip-grant-tables",
             "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M", *self._user()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await _wait_until(lambda: self.execute("SELECT 1"), "mariadbd", self.process, self.log_path)

    async def execute(self, sql: str) -> None:
        conn = await aiomysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2)
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql)
        finally:
            conn.close()

    def pause(self) -> None:
        """SIGSTOP: the server hangs with every connection open, as a stalled disk or VM would make it."""
        _signal(self.process, signal.SIGSTOP)

    def resume(self) -> None:
        _signal(self.process, signal.SIGCONT)

    def kill9(self) -> None:
        _signal(self.process, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.process)
