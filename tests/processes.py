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

import httpx

ROOT = Path(__file__).resolve().parent.parent


def orq_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORQ_")}
    env.update(overrides)
    env.setdefault("ORQ_ADMIN_TOKEN", "test-admin")
    return env


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (a clean shutdown) and wait up to ``timeout`` seconds; SIGKILL if it lingers. A no-op once exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        stop_process(self.process, timeout)
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(base_url: str, api: OrqProcess | None = None, timeout: float = 30) -> None:
    """Block until ``{base_url}/readyz`` answers 200 (Redis and SQL reachable); past ``timeout`` a RuntimeError,
    with ``api``'s output when the process is given. Blocking: for sync fixtures starting real processes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            output = f":\n{api.output()}" if api is not None else ""
            raise RuntimeError(f"api at {base_url} did not become ready{output}")
        time.sleep(0.1)


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
