"""The BullMQ peer: processing rate and enqueue->start latency of BullMQ (Node) on the bench's Redis.

The Node side is ``bullmq/bench.mjs`` with ``bullmq`` and ``ioredis`` pinned by ``bullmq/package-lock.json``;
``npm ci`` installs them into ``bullmq/node_modules`` on first use and again whenever the lockfile changes.
Without Node or npm, or when the install or the run fails, the suite returns no rows and says why on stderr:
``make bench`` still runs, and the Orquesta rows print "no peer row" in their ratio column.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import BENCH_REDIS_URL, Result

PEER_DIR = Path(__file__).with_name("bullmq")
LOCKFILE = PEER_DIR / "package-lock.json"
# Inside node_modules, so that `npm ci` (which deletes node_modules first) also deletes it.
INSTALLED_STAMP = PEER_DIR / "node_modules" / ".orq-lockfile-sha256"
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300

JOBS = 20_000
CONCURRENCY = 50
RATES = (500, 5000)
SECONDS_PER_RATE = 10

PROCESSING = f"BullMQ processing (concurrency {CONCURRENCY})"
COMMANDS = "BullMQ redis commands per job (worker side)"


def latency_row(quantile: str, rate: int) -> str:
    """The name of BullMQ's enqueue->start row, ``quantile`` "p50" or "p99"."""
    return f"BullMQ enqueue->start {quantile} at {rate}/s"


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why."""


def _lockfile_digest() -> str:
    return hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()


def ensure_installed() -> None:
    """``npm ci`` unless node_modules was installed from the current lockfile."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerUnavailable("node or npm not found on PATH")
    digest = _lockfile_digest()
    if INSTALLED_STAMP.is_file() and INSTALLED_STAMP.read_text().strip() == digest:
        return
    print("bullmq: npm ci ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER_DIR,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"npm ci took more than {INSTALL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise PeerUnavailable(f"npm ci failed ({done.returncode}): {_last_line(done.stderr or done.stdout)}")
    INSTALLED_STAMP.write_text(digest)


def run_script(redis_url: str = BENCH_REDIS_URL) -> dict[str, Any]:
    """Run bench.mjs on ``redis_url`` and return its JSON figures."""
    command = ["node", "bench.mjs", "--url", redis_url, "--jobs", str(JOBS), "--concurrency", str(CONCURRENCY),
               "--rates", ",".join(map(str, RATES)), "--seconds", str(SECONDS_PER_RATE)]
    try:
        # stderr is the script's progress: let it through to the terminal like the other suites'.
        done = subprocess.run(command, cwd=PEER_DIR, stdout=subprocess.PIPE, text=True, timeout=RUN_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"bench.mjs took more than {RUN_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise PeerUnavailable(f"bench.mjs exited with {done.returncode}")
    try:
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise PeerUnavailable(f"bench.mjs printed no JSON: {_last_line(done.stdout)!r}") from exc
    return figures


def rows(figures: dict[str, Any]) -> list[Result]:
    """The table rows for bench.mjs's figures."""
    processing = figures["processing"]
    version = f"bullmq {figures['versions']['bullmq']}, node {figures['versions']['node']}"
    results = [Result(PROCESSING, processing["jobs_per_s"], "jobs/s", "peer",
                      f"{processing['jobs']} no-op jobs, first start to last completion; {version}")]
    if processing["redis_commands_per_job"] is not None:  # None: the counters were reset during the run
        results.append(Result(COMMANDS, processing["redis_commands_per_job"], "cmds", "peer",
                              "INFO commandstats, server-wide"))
    for latency in figures["latency"]:
        rate = latency["rate"]
        results += [
            Result(latency_row("p50", rate), latency["p50_ms"], "ms", "peer", f"{latency['jobs']} jobs"),
            Result(latency_row("p99", rate), latency["p99_ms"], "ms", "peer", "add() to processor start"),
        ]
    return results


async def bullmq_peer() -> list[Result]:
    """The BullMQ rows, or none (with the reason on stderr) where BullMQ cannot run."""
    try:
        await asyncio.to_thread(ensure_installed)
        return rows(await asyncio.to_thread(run_script))
    except PeerUnavailable as exc:
        print(f"bullmq: peer rows skipped: {exc}", file=sys.stderr, flush=True)
        return []


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
