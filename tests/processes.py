"""Starting real ``orq`` processes for tests about processes (crashes, signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent


def orq_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORQ_")}
    env.update(overrides)
    env.setdefault("ORQ_ADMIN_TOKEN", "test-admin")
    return env


class OrqProcess:
    """One ``orq <command>`` child process, its output in a log file for post-mortems."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orquesta", *args], env=dict(env), cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def orq_processes() -> Iterator[list[OrqProcess]]:
    """Collects processes started in the block and stops every one of them at its end."""
    started: list[OrqProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.terminate()


DEV_READY_LINE = "Press Ctrl-C to stop."


class Printing(Protocol):
    """A child process whose output is kept (``OrqProcess`` or a test's own ``orq dev`` runner)."""

    process: subprocess.Popen[bytes]

    def output(self) -> str: ...


async def dev_banner(dev: Printing, timeout: float = 90) -> dict[str, str]:
    """What ``orq dev`` printed once it is up: label → value (dashboard, admin token, demo key, try, …)."""
    deadline = time.monotonic() + timeout
    while DEV_READY_LINE not in dev.output():
        assert dev.process.poll() is None, dev.output()
        assert time.monotonic() < deadline, f"orq dev did not start:\n{dev.output()}"
        await asyncio.sleep(0.2)
    banner = dev.output().split("Orquesta is running.", 1)[1].split(DEV_READY_LINE, 1)[0]
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in banner.splitlines() if line.startswith("  ") and ":" in line}
