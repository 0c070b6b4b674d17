"""Event fan-out latency: from appending an event to its delivery on every subscribed WebSocket.

A real ``orq api`` process serves the feed; a second process holds the sockets (so receiving does not share
a core with appending), and this one appends ``execution.log`` events at a steady rate, each carrying the
wall-clock time it was submitted. Latency = receive time - submit time, over every delivery.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
from multiprocessing.queues import Queue
from typing import Any

import msgspec

from bench.common import PARTITIONS, Result, env, fresh_redis, processes
from bench.http import call, free_port, session, wait_ready
from shared.domain import commit_script
from shared.log import keys
from shared.log.commit import Committer, Unit
from shared.log.events import ExecutionLog

CONNECT_TIMEOUT_S = 60


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")



def _receiver(urls: list[str], expected: int, out: Queue[Any]) -> None:
    """Child process: open every socket, report ready, then collect ``expected`` latencies per socket."""
    asyncio.run(_receive_all(urls, expected, out))


async def _receive_all(urls: list[str], expected: int, out: Queue[Any]) -> None:
    from websockets.asyncio.client import connect

    sockets = [await connect(url, max_queue=None, compression=None) for url in urls]
    out.put("ready")
    latencies: list[float] = []

    async def drain(ws: Any) -> int:
        got = 0
        try:
            while got < expected:
                raw = await asyncio.wait_for(ws.recv(), 30)
                now = time.time_ns()
                body = msgspec.json.decode(raw)
                for event in body if isinstance(body, list) else [body]:
                    latencies.append((now - int(event["data"]["message"])) / 1e6)
                    got += 1
        except Exception:  # a lost socket shows up as missing deliveries
            pass
        return got

    counts = await asyncio.gather(*(drain(ws) for ws in sockets))
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    out.put((sum(counts), latencies))


async def fanout_latency() -> list[Result]:
    """100 sockets over 10 tenants at 1,000 events/s (10,000 deliveries/s): one event per message, then batched."""
    return [*await fanout(batch=False), *await fanout(batch=True)]


async def fanout(
    rate: int = 1000, seconds: float = 10.0, sockets: int = 100, tenants: int = 10, batch: bool = False
) -> list[Result]:
    """``sockets`` subscribers spread over ``tenants``; ``rate`` events a second spread over the tenants."""
    redis = await fresh_redis()
    committer = commit_script.committer(redis)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        e = env(ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{os.path.join(tmp, 'feed.db')}")
        with processes((["api", "--host", "127.0.0.1", "--port", str(port)], e)):
            async with session(base, 2) as client:
                await wait_ready(client, CONNECT_TIMEOUT_S)
                handles = []
                for n in range(tenants):
                    created = await call(client, "POST", "/api/tenants", {"name": f"feed-{n}", "plan": "bench"},
                                         "Bearer bench-admin")
                    handles.append((created["id"], created["api_key"]))
            mode = "&batch=1" if batch else ""
            urls = [f"ws://127.0.0.1:{port}/ws/events?token={handles[i % tenants][1]}{mode}" for i in range(sockets)]
            total = int(rate * seconds)
            per_tenant = total // tenants
            ctx = multiprocessing.get_context("spawn")
            out: Queue[Any] = ctx.Queue()
            child = ctx.Process(target=_receiver, args=(urls, per_tenant, out))
            child.start()
            try:
                await asyncio.wait_for(asyncio.to_thread(out.get), CONNECT_TIMEOUT_S)
                await _produce(committer, handles, per_tenant * tenants, rate)
                delivered, latencies = await asyncio.wait_for(asyncio.to_thread(out.get), 120)
            finally:
                child.join(10)
                if child.is_alive():
                    child.kill()
    await committer.close()
    await redis.aclose()
    expected = per_tenant * sockets
    setup = f"{sockets} sockets, {tenants} tenants, {'batch=1' if batch else 'one event per message'}"
    label = f"feed fan-out{' (batch)' if batch else ''}"
    return [
        Result(f"{label} p50 at {rate} ev/s", _percentile(latencies, 0.50), "ms", "", setup),
        Result(f"{label} p99 at {rate} ev/s", _percentile(latencies, 0.99), "ms", "<= 100 ms",
               f"{delivered:,} of {expected:,} deliveries"),
    ]


async def _produce(committer: Committer, tenants: list[tuple[str, str]], total: int, rate: int) -> None:
    """Append ``total`` events at ``rate`` a second, round-robin over the tenants, each stamped when submitted."""
    partitions = [keys.partition_of(tenant_id, PARTITIONS) for tenant_id, _ in tenants]
    start = time.perf_counter()
    for n in range(total):
        i = n % len(tenants)
        event = ExecutionLog(tenant_id=tenants[i][0], aggregate_id="bench", ts=int(time.time() * 1000),
                             step_index=0, message=str(time.time_ns()))
        committer.submit(Unit(partitions[i]).event(event))
        delay = start + (n + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
