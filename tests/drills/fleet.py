"""The ``orq`` processes of one drill: started by name and waited for; every one stopped at the end.

A drill that fails prints the tail of every process log (kept in the test's tmp folder): the product's own
account of what went wrong is what tells a product defect from a test bug.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.executor.seed import PARTITIONS
from tests.helpers import assert_eventually, free_port
from tests.processes import OrqProcess, orq_env, orq_processes

START_TIMEOUT_S = 30.0
ADMIN_TOKEN = "drill-admin"


def drill_env(redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of every process of a drill: its Redis, the seed's partitions, then ``settings``."""
    return orq_env(ORQ_REDIS_URL=redis_url, ORQ_PARTITIONS=str(PARTITIONS), ORQ_ADMIN_TOKEN=ADMIN_TOKEN,
                   **settings)


def pid_of(consumer: str) -> int:
    """The process id in an executor's consumer name (``host:pid:random``)."""
    return int(consumer.split(":")[-2])


class Fleet:
    """Starts ``orq`` processes with one environment, logs under ``tmp``."""

    def __init__(self, env: dict[str, str], tmp: Path, started: list[OrqProcess]) -> None:
        self.env = env
        self.tmp = tmp
        self.started = started

    def start(self, name: str, *args: str) -> OrqProcess:
        process = OrqProcess(list(args), self.env, self.tmp / f"{name}.log")
        self.started.append(process)
        return process

    async def executor(self, name: str) -> OrqProcess:
        process = self.start(name, "executor")
        await self.ready(process, "started with")
        return process

    async def projector(self, name: str) -> OrqProcess:
        process = self.start(name, "projector")
        await self.ready(process, "starting on")
        return process

    async def api(self, name: str) -> str:
        """An ``orq api`` on a free port; its base URL once ``/readyz`` says Redis and SQL answer."""
        port = free_port()
        process = self.start(name, "api", "--port", str(port))
        base_url = f"http://127.0.0.1:{port}"

        async def ready() -> None:
            _alive(process)
            async with httpx.AsyncClient(timeout=2) as client:
                try:
                    response = await client.get(f"{base_url}/readyz")
                except httpx.TransportError as exc:
                    raise AssertionError(f"not answering: {exc}") from exc
            assert response.status_code == 200, response.text

        await assert_eventually(ready, timeout=START_TIMEOUT_S, interval=0.1, message=f"{name} ready")
        return base_url

    @staticmethod
    async def ready(process: OrqProcess, marker: str) -> None:
        async def logged() -> None:
            _alive(process)
            assert marker in process.output()

        await assert_eventually(logged, timeout=START_TIMEOUT_S, interval=0.1, message=f"{process.log_path.stem} up")

    def report(self) -> str:
        parts = []
        for process in self.started:
            # Log records only (they start with the date): tracebacks would crowd them out; the file has all.
            records = [line for line in process.output().splitlines() if line[:2].isdigit()]
            parts.append(f"--- {process.log_path} (pid {process.pid}, exit {process.process.poll()}) ---")
            parts.extend(records[-25:])
        return "\n".join(parts)


def _alive(process: OrqProcess) -> None:
    # Not an AssertionError: a process that died at start will not come up by waiting longer.
    if process.process.poll() is not None:
        raise RuntimeError(f"{process.log_path.stem} exited with {process.process.returncode}:\n{process.output()}")


@contextmanager
def fleet(env: dict[str, str], tmp: Path) -> Iterator[Fleet]:
    """A fleet whose processes are all stopped (SIGTERM, then SIGKILL) when the block ends."""
    started_at = time.monotonic()
    with orq_processes() as started:
        crew = Fleet(env, tmp, started)
        try:
            yield crew
        except BaseException:
            print(f"drill failed after {time.monotonic() - started_at:.1f}s; process logs:\n{crew.report()}")
            raise
