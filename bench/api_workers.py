"""The API on several processes: single executes from 64 clients against ``orq api`` with 1 worker and with 2.

Each request is one ``POST /api/workflows/{id}/execute`` (one run, admitted and queued); no executor runs, so
what is measured is admission: auth, the workflow read and the admission commit, through HTTP. Both APIs run
side by side on one fresh Redis database and take the load in turns, ``ROUNDS`` windows each. The 2-worker
row's ratio to the 1-worker row is printed in the ratio column (target >= 1.5x on a 2-core machine), and the
note gives each round's ratio.

The load generator is ``api_workers.mjs`` (Node's built-in HTTP client, no npm packages) in its own
process, not aiohttp in this one: it shares the machine's cores with the workers it measures, so it must be
cheap, and the notes print what it took (client CPU) beside what the API processes, Redis and everything else
on the machine took. Without Node the rows are skipped with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import text

from bench.common import BENCH_MYSQL_URL, BENCH_REDIS_URL, Result, env, fresh_redis, processes
from bench.http import call, free_port, session, wait_ready
from services.api.server import WORKER_HEADER
from shared.readmodel.db import create_engine

CLIENTS = 64
WARMUP_S = 1
SECONDS = 5
ROUNDS = 3
WORKERS = (1, 2)
GENERATOR = Path(__file__).with_name("api_workers.mjs")
ADMIN = "Bearer bench-admin"
TICKS = os.sysconf("SC_CLK_TCK")


def row_name(workers: int) -> str:
    return f"API single executes, {CLIENTS} clients, {workers} worker{'s' if workers > 1 else ''}"


@dataclass(frozen=True, slots=True)
class Window:
    """What one measured window gave: admissions, and the CPU seconds each party spent in it."""

    admitted: int
    seconds: float
    by_worker: dict[str, int]
    client_cpu_s: float
    api_cpu_s: float
    redis_cpu_s: float
    machine_cpu_s: float

    @property
    def other_cpu_s(self) -> float:
        """What the rest of the machine took meanwhile (other people's work on a shared machine)."""
        return max(0.0, self.machine_cpu_s - self.client_cpu_s - self.api_cpu_s - self.redis_cpu_s)

    @property
    def rate(self) -> float:
        return self.admitted / self.seconds


async def _ensure_database() -> None:
    """The bench database exists (the API creates its tables; single executes write nothing to SQL)."""
    server_url, _, name = BENCH_MYSQL_URL.rpartition("/")
    server = create_engine(f"{server_url}/mysql")
    try:
        async with server.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {name}"))
    finally:
        await server.dispose()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of proc(5)


def _with_children(pid: int) -> list[int]:
    """``pid`` and its child processes (the workers of ``orq api --workers N``)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return [pid, *children]


def _machine_cpu_s() -> float:
    """CPU seconds all processes of the machine spent so far (``/proc/stat``, every core, idle excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


async def _redis_cpu_s(redis: Redis) -> float:
    """The Redis server's CPU seconds so far (the whole server: other databases' clients count too)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _target(base: str) -> tuple[str, str]:
    """A tenant on the unlimited bench plan and a one-step workflow: (its execute path, its auth header)."""
    async with session(base, 2) as client:
        await wait_ready(client)
        tenant = await call(client, "POST", "/api/tenants", {"name": "workers", "plan": "bench"}, ADMIN)
        auth = f"Bearer {tenant['api_key']}"
        workflow = await call(client, "POST", "/api/workflows", {"name": "noop", "steps": [{"action": "noop"}]},
                              auth)
    return f"/api/workflows/{workflow['id']}/execute", auth


async def _wait_listening(base: str, workers: int, timeout: float = 60) -> None:
    """Until ``workers`` distinct workers answer (each listens once its own startup is done): clients connecting
    before that would all stay on the first worker up, their connections being kept alive."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(force_close=True)) as client:
        while True:
            seen = set()
            for _ in range(8 * workers):
                async with client.get("/healthz") as reply:
                    seen.add(reply.headers.get(WORKER_HEADER))
            if len(seen) >= workers:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen)} of {workers} API workers answered")
            await asyncio.sleep(0.2)


@dataclass(frozen=True, slots=True)
class _Api:
    """One running ``orq api --workers <workers>``: where to send executes, and its processes."""

    workers: int
    base: str
    path: str
    auth: str
    pids: list[int]


Sample = tuple[float, float, float]


async def _sample(api: _Api, redis: Redis) -> Sample:
    """CPU seconds so far of ``api``'s processes, of the Redis server, and of the whole machine."""
    return sum(map(_cpu_s, api.pids)), await _redis_cpu_s(redis), _machine_cpu_s()


def _window(figures: dict[str, Any], start: Sample, end: Sample) -> Window:
    refused = {status: n for status, n in figures["by_status"].items() if status != "202"}
    if refused or figures["errors"]:
        raise RuntimeError(f"{figures['label']} workers: replies other than 202: {refused}, "
                           f"{figures['errors']} errors")
    api_cpu, redis_cpu, machine_cpu = (after - before for before, after in zip(start, end, strict=True))
    return Window(admitted=figures["by_status"].get("202", 0), seconds=figures["seconds"],
                  by_worker=figures["by_worker"], client_cpu_s=figures["cpu_s"], api_cpu_s=api_cpu,
                  redis_cpu_s=redis_cpu, machine_cpu_s=machine_cpu)


async def _drive(apis: list[_Api]) -> dict[int, list[Window]]:
    """Run the load generator over ``apis`` in turns; each measured window with the CPU each party spent in it
    (counters read when the generator says a window starts and ends)."""
    by_label = {str(api.workers): api for api in apis}
    targets = [{"label": str(api.workers), "url": api.base, "path": api.path, "auth": api.auth} for api in apis]
    command = ["node", str(GENERATOR), "--targets", json.dumps(targets), "--rounds", str(ROUNDS),
               "--clients", str(CLIENTS), "--warmup", str(WARMUP_S), "--seconds", str(SECONDS)]
    windows: dict[int, list[Window]] = {api.workers: [] for api in apis}
    marks: dict[str, Sample] = {}
    redis = Redis.from_url(BENCH_REDIS_URL)
    node = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        assert node.stdout is not None
        async for raw in node.stdout:
            line = json.loads(raw)
            if "mark" in line:
                marks[line["mark"]] = await _sample(by_label[line["label"]], redis)
            else:
                figures = line["window"]
                windows[by_label[figures["label"]].workers].append(_window(figures, marks["start"], marks["end"]))
        if await node.wait() != 0:
            raise RuntimeError(f"api_workers.mjs exited with {node.returncode}")
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
        await redis.aclose()
    return windows


def _note(window: Window, rounds: list[float]) -> str:
    parties = {"client": window.client_cpu_s, "API": window.api_cpu_s, "Redis": window.redis_cpu_s,
               "others": window.other_cpu_s}
    note = ", ".join(f"{name} {cpu_s / window.seconds:.2f}" for name, cpu_s in parties.items()) + " cores"
    # The API's CPU per admission does not depend on how many cores the machine had left for it: compare it.
    note += f", API {window.api_cpu_s / max(window.admitted, 1) * 1e6:,.0f} us/exec"
    if len(window.by_worker) > 1:
        note += "; replies by worker " + "/".join(str(n) for n in sorted(window.by_worker.values(), reverse=True))
    if rounds:
        note += "; rounds " + " ".join(f"{ratio:.2f}x" for ratio in rounds)
    return note


async def api_workers() -> list[Result]:
    """The 1-worker and 2-worker rows, or none (with the reason on stderr) without Node.

    Both APIs run side by side (an idle one costs nothing), and the load alternates between them for
    ``ROUNDS`` rounds: on a shared machine, two windows close in time see the same neighbours, so their ratio
    means more than that of two long windows a minute apart."""
    if shutil.which("node") is None:
        print("api workers: rows skipped: node not found on PATH", file=sys.stderr, flush=True)
        return []
    await _ensure_database()
    redis = await fresh_redis()
    await redis.aclose()
    ports = {workers: free_port() for workers in WORKERS}
    api_env = env(ORQ_DATABASE_URL=BENCH_MYSQL_URL)
    commands = [(["api", "--port", str(ports[w]), "--workers", str(w)], api_env) for w in WORKERS]
    with processes(*commands) as procs:
        apis = []
        for workers, process in zip(WORKERS, procs, strict=True):
            base = f"http://127.0.0.1:{ports[workers]}"
            path, auth = await _target(base)
            await _wait_listening(base, workers)
            apis.append(_Api(workers, base, path, auth, _with_children(process.pid)))
        windows = await _drive(apis)
    totals = {workers: _sum(found) for workers, found in windows.items()}
    rounds = [two.rate / one.rate if one.rate else 0.0 for one, two in zip(windows[1], windows[2], strict=True)]
    return [
        Result(row_name(workers), total.rate, "exec/s", ">= 1.5x 1 worker" if workers > 1 else "report",
               _note(total, rounds if workers > 1 else []), peer=row_name(1) if workers > 1 else "")
        for workers, total in totals.items()
    ]


def _sum(windows: list[Window]) -> Window:
    by_worker: dict[str, int] = {}
    for window in windows:
        for worker, count in window.by_worker.items():
            by_worker[worker] = by_worker.get(worker, 0) + count
    return Window(admitted=sum(w.admitted for w in windows), seconds=sum(w.seconds for w in windows),
                  by_worker=by_worker, client_cpu_s=sum(w.client_cpu_s for w in windows),
                  api_cpu_s=sum(w.api_cpu_s for w in windows), redis_cpu_s=sum(w.redis_cpu_s for w in windows),
                  machine_cpu_s=sum(w.machine_cpu_s for w in windows))
