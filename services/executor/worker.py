"""The executor: takes work entries by priority into a fixed number of slots and runs them.

Loops: dispatch (new entries, lowest priority number first, blocking when all are empty), backoff (entries
whose retry delay has passed), expired (entries of executors that stopped renewing their lease), lease
renewal, and cancel notices over pub/sub. All hand jobs to one bounded set of slots.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from services.executor.global_rate import GlobalRate
from services.executor.job import Job, jobs_from_reply
from services.executor.robot_leases import RobotLeases
from services.executor.run import ExecutionRun, RunEnv
from shared.domain.actions.runtime import Actions
from shared.domain.aggregates import Status
from shared.domain.executions.pinned import PinnedDefinitions
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer, load_lua
from shared.log.redis import BLOCK_MS, PipelinedScript, ensure_groups, guarded, run_pipeline, text
from shared.log.stream_reads import StreamReads
from shared.service.bootstrap import Service
from shared.service.metrics import gauge

log = logging.getLogger(__name__)
BACKOFF_POLL_S = 0.2
CANCEL_RETRY_S = 0.5
CANCEL_RETRY_MAX_S = 5.0
REFILL_WAIT_S = 0.002
GLOBAL_WAIT_S = 0.25


def dispatch_limits(settings: Settings) -> dict[str, list[int]]:
    """Plan name → limits, as dispatch.lua reads them; "" is the fallback: the most restrictive plan."""
    limits = {name: plan.limits() for name, plan in settings.plans.items()}
    strictest = min(settings.plans.values(), key=lambda plan: (plan.weight, plan.max_concurrent))
    return {**limits, "": strictest.limits()}


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Executor:
    """Runs up to ``settings.executor_concurrency`` executions at once as consumer ``name``."""

    def __init__(self, settings: Settings, redis: Redis, committer: Committer, actions: Actions,
                 name: str | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.name = name or consumer_name()
        self.slots = settings.executor_concurrency
        self.env = RunEnv(committer, actions, self.name, settings.max_crashes, settings.max_output_bytes,
                          settings.max_body_bytes, redis=redis, plans=dict(settings.plans),
                          partitions=settings.partitions)
        self._robot_leases = RobotLeases(redis, committer, self.env.definitions, settings)
        self.partitions = list(range(settings.partitions))
        self.streams = {p: keys.work_streams(p) for p in self.partitions}
        self._dispatch = PipelinedScript(load_lua("services.executor", "dispatch.lua"))
        self._renew = PipelinedScript(load_lua("services.executor", "renew.lua"))
        self._handover: AsyncScript = redis.register_script(load_lua("services.executor", "handover.lua"))
        self._cache = PinnedDefinitions()
        self._held: list[tuple[int, int, Job]] = []  # (priority, order, job): delivered, not yet started
        self._order = 0
        self._running: dict[str, tuple[asyncio.Task[None], ExecutionRun]] = {}
        self._slot_freed = asyncio.Event()
        self._rotation = 0
        self.lease_ms = int(settings.lease_s * 1000)
        self._refill_at = max(1, self.slots // 8)
        self._plans = msgspec.msgpack.encode(dispatch_limits(settings))
        self._rate_window_ms = int(settings.rate_window_s * 1000)
        self._global = GlobalRate(redis, settings.global_rate, self._rate_window_ms)
        self._bells: dict[str, str] = {keys.bell(p): "0-0" for p in self.partitions}
        self._bell_partition = {keys.bell(p): p for p in self.partitions}
        self._bell_reads = StreamReads(redis)
        self._may_have_work: set[int] = set(self.partitions)
        self._next_expired_look = 0.0

    @property
    def free(self) -> int:
        return self.slots - len(self._running) - len(self._held)

    # --- main -----------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop``; then take nothing new, let running executions finish within the grace period,
        hand the rest over, return. Leases are renewed until the very end, so nothing is taken over early."""
        await self._ensure_groups()
        log.info("executor %s started with %d slots", self.name, self.slots)
        renewing = asyncio.Event()  # set once nothing is held any more
        loops = [
            asyncio.create_task(self._dispatch_loop(stop), name="dispatch"),
            asyncio.create_task(self._every(BACKOFF_POLL_S, stop, self._take_due), name="backoff"),
            asyncio.create_task(self._every(self.settings.lease_s / 3, stop, self._take_expired), name="expired"),
            asyncio.create_task(self._every(min(self.settings.robot_lease_s / 3, 1.0), stop,
                                            self._robot_leases.reoffer_expired), name="robot leases"),
            asyncio.create_task(self._listen_for_cancels(stop), name="cancels"),
        ]
        leases = asyncio.create_task(self._every(self.settings.lease_s / 3, renewing, self._renew_leases),
                                     name="leases")
        await stop.wait()
        await self._drain(loops)
        renewing.set()
        await leases

    async def _ensure_groups(self) -> None:
        for p in self.partitions:
            await ensure_groups(self.redis, self.streams[p], keys.GROUP_EXECUTOR)

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        """Take nothing new; let running steps finish within the grace period (each run stops before its
        next step); then hand every entry still held over to the other executors at once."""
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._bell_reads.close()
        self.env.draining.set()
        unfinished = [run.job for _, run in self._running.values()] + [job for _, _, job in self._held]
        running = [task for task, _ in self._running.values()]
        if running:
            log.info("letting %d running steps finish (at most %ss)", len(running), self.settings.shutdown_grace_s)
            _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._hand_over(unfinished)
        log.info("executor %s stopped", self.name)

    async def _hand_over(self, jobs: list[Job]) -> None:
        by_partition: dict[int, list[str]] = {}
        for job in jobs:
            by_partition.setdefault(job.p, []).extend([job.stream, job.entry_id])
        for p, pairs in by_partition.items():
            moved = await self._handover(keys=guarded([keys.bell(p)]),
                                         args=[keys.GROUP_EXECUTOR, self.name, self.lease_ms, *pairs])
            if moved:
                log.info("handed %s executions of partition %d over to the other executors", moved, p)

    async def _every(self, interval: float, stop: asyncio.Event, work: Callable[[], Awaitable[None]]) -> None:
        while not stop.is_set():
            try:
                await work()
            except Exception:
                log.exception("%s failed; retrying", getattr(work, "__name__", "loop"))
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    # --- taking work ----------------------------------------------------------------------------------------
    async def _call(self, mode: str, counts: dict[int, int], min_idle: int = 0) -> list[Job]:
        calls = [(p, n) for p, n in counts.items() if n > 0]
        if not calls:
            return []
        now = now_ms()

        def build(pipe: Pipeline) -> None:
            for p, n in calls:
                prefix = keys.tag(p) + ":"
                args: list[str | int | bytes] = [mode, keys.GROUP_EXECUTOR, self.name, n, prefix, min_idle, now,
                                                 self._plans, self._rate_window_ms]
                self._dispatch.queue(pipe, self.streams[p], args)

        replies = await run_pipeline(self.redis, build, [self._dispatch])
        jobs: list[Job] = []
        for (p, _), reply in zip(calls, replies, strict=True):
            jobs += jobs_from_reply(p, self.streams[p], reply, self._cache, self._order + len(jobs))
        self._order += len(jobs)
        return jobs

    def _rotated(self, partitions: list[int] | None = None) -> list[int]:
        """The partitions, starting from a rotating one so none is always last."""
        partitions = self.partitions if partitions is None else partitions
        first = self._rotation % len(partitions)
        self._rotation += 1
        return partitions[first:] + partitions[:first]

    def _split(self, free: int, partitions: list[int] | None = None) -> dict[int, int]:
        """Spread ``free`` slots over partitions, the first ones of the rotation getting the remainder."""
        rotated = self._rotated(partitions)
        n = len(rotated)
        return {p: free // n + (1 if i < free % n else 0) for i, p in enumerate(rotated)}

    async def _dispatch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.free <= 0 or (self.free < self._refill_at and self._running):
                # Refill in batches: one dispatch call for many freed slots, not one per slot. The short
                # timeout bounds how long a free slot waits under light load.
                self._slot_freed.clear()
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), REFILL_WAIT_S if self.free > 0 else None)
                except TimeoutError:
                    pass
                else:
                    continue
            try:
                if not self._may_have_work:
                    await self._wait_for_bell()
                    continue
                now = now_ms()
                allowed = await self._global.reserve(self.free, now)
                if allowed <= 0:
                    await asyncio.sleep(GLOBAL_WAIT_S)  # the deployment's budget for this window is spent
                    continue
                counts = self._split(allowed, await self._best_partitions())
                jobs = await self._call("next", counts)
                await self._global.give_back(allowed - len(jobs), now)
                taken = Counter(job.p for job in jobs)
                for p, asked in counts.items():
                    if asked and taken[p] < asked:
                        self._may_have_work.discard(p)  # drained (or its tenants are at their limits)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.error("consumer group missing (was Redis flushed or restored?); creating it again")
                await self._ensure_groups()
                continue
            except Exception:
                log.exception("dispatch failed; retrying in 1s")
                await asyncio.sleep(1)
                continue
            self._admit(jobs)

    async def _best_partitions(self) -> list[int]:
        """Of the partitions that may have work, those whose best waiting level is the best of all.

        Priority holds across partitions: a level-1 execution anywhere goes before level-9 work elsewhere.
        """
        candidates = sorted(self._may_have_work)
        if len(candidates) == 1:
            return candidates
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in candidates:
                pipe.zrange(keys.levels(p), 0, 0, withscores=True)
            replies = await pipe.execute()
        best: dict[int, float] = {p: reply[0][1] for p, reply in zip(candidates, replies, strict=True) if reply}
        for p in candidates:
            if p not in best:
                self._may_have_work.discard(p)
        if not best:
            return candidates  # let the dispatch call itself find out
        top = min(best.values())
        return [p for p, level in best.items() if level == top]

    async def _wait_for_bell(self) -> None:
        """Nothing to take: block until a bell rings (work queued, or a limited tenant got room) or BLOCK_MS."""
        reply = await self._bell_reads.read(self._bells, count=1, block_ms=BLOCK_MS)
        if not reply:  # quiet for a while: look everywhere again (a rate-limit minute may have turned)
            self._may_have_work.update(self.partitions)
        for stream, entries in reply:
            self._bells[stream] = text(entries[-1][0])
            self._may_have_work.add(self._bell_partition[stream])
        if reply and self.free > 0:
            # A parked execution may be ready to go on (its robot or child finished): look in the rung partitions.
            await self._take_due([self._bell_partition[stream] for stream, _ in reply])
        if reply and time.monotonic() >= self._next_expired_look:
            # A shutting-down executor may have handed work over: look now (at most once a second).
            self._next_expired_look = time.monotonic() + 1.0
            await self._take_expired()

    async def _take_due(self, partitions: list[int] | None = None) -> None:
        """Take retries whose time has come: as many as there are free slots, from each partition in turn."""
        for p in self._rotated(partitions):
            now = now_ms()
            allowed = await self._global.reserve(self.free, now)
            if allowed <= 0:
                return
            jobs = await self._call("due", {p: allowed})
            await self._global.give_back(allowed - len(jobs), now)
            self._admit(jobs)

    async def _take_expired(self) -> None:
        """Take over entries whose executor stopped renewing them: as many as there are free slots, from
        each partition in turn (a hand-over or a crash may have left them all in one partition)."""
        for p in self._rotated():
            if self.free <= 0:
                return
            jobs = await self._call("expired", {p: self.free}, min_idle=self.lease_ms)
            for job in jobs:
                log.info("taking over execution %s from %s", job.execution_id, job.previous_owner,
                         extra={"execution_id": job.execution_id})
            self._admit(jobs)

    def _admit(self, jobs: list[Job]) -> None:
        for job in jobs:
            heapq.heappush(self._held, (job.priority, job.order, job))
        while self._held and len(self._running) < self.slots:
            _, _, job = heapq.heappop(self._held)
            self._start(job)

    def _start(self, job: Job) -> None:
        superseded = self._running.get(job.execution_id)
        if superseded is not None:
            # Handed out to us again (our own orphan, reclaimed): the old run's token is stale, it can commit
            # nothing more; stop it so it does not keep a slot.
            superseded[0].cancel()
        run = ExecutionRun(job, self.env)
        task = asyncio.create_task(run.run(), name=f"execution {job.execution_id}")
        self._running[job.execution_id] = (task, run)
        task.add_done_callback(functools.partial(self._finished, job.execution_id, run))

    def _finished(self, execution_id: str, run: ExecutionRun, task: asyncio.Task[None]) -> None:
        current = self._running.get(execution_id)
        if current is not None and current[1] is run:
            del self._running[execution_id]
        if not task.cancelled() and task.exception() is not None:
            # Its entry stays pending to us, unrenewed: the expired scan takes it back after one lease.
            log.error("execution %s crashed in the executor", execution_id, exc_info=task.exception(),
                      extra={"execution_id": execution_id})
        if self._held:
            self._admit([])
        self._slot_freed.set()

    # --- leases and cancels ---------------------------------------------------------------------------------
    async def _renew_leases(self) -> None:
        """Re-claim every entry we hold; an entry no longer ours means another executor took over: stop it."""
        held: dict[int, list[str]] = {}
        for task_run in self._running.values():
            job = task_run[1].job
            held.setdefault(job.p, []).extend([job.stream, job.entry_id])
        for _, _, job in self._held:
            held.setdefault(job.p, []).extend([job.stream, job.entry_id])
        if not held:
            return
        def build(pipe: Pipeline) -> None:
            for p, pairs in held.items():
                self._renew.queue(pipe, [keys.log(p)], [keys.GROUP_EXECUTOR, self.name, *pairs])

        replies = await run_pipeline(self.redis, build, [self._renew])
        # Entry ids are unique per stream only (two levels can hand out the same id): match both.
        lost = {(text(stream), text(entry)) for reply in replies for stream, entry in zip(reply[::2], reply[1::2],
                                                                                         strict=True)}
        for execution_id, (task, run) in list(self._running.items()):
            if (run.job.stream, run.job.entry_id) in lost and not run.finishing:  # a finishing run acked it
                log.warning("lost the lease of execution %s; stopping it", execution_id)
                task.cancel()

    async def _listen_for_cancels(self, stop: asyncio.Event) -> None:
        """Interrupt running steps of cancelled executions. Supervised: after any error (a Redis restart drops
        the subscription) it subscribes again, then looks up what it may have missed meanwhile."""
        delay = CANCEL_RETRY_S
        while not stop.is_set():
            try:
                await self._cancel_subscription(stop)
                return
            except Exception as exc:
                log.warning("cancel notices interrupted (%s); subscribing again in %.1fs", exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, CANCEL_RETRY_MAX_S)

    async def _cancel_subscription(self, stop: asyncio.Event) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*(keys.cancel_channel(p) for p in self.partitions))
            await self._stop_cancelled()
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._interrupt(text(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _stop_cancelled(self) -> None:
        """Interrupt runs whose execution was cancelled while no notice could reach us."""
        runs = [run for _, run in self._running.values()]
        if not runs:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for run in runs:
                pipe.hget(run.job.state_key, "status")
            statuses = await pipe.execute()
        for run, status in zip(runs, statuses, strict=True):
            if text(status) == Status.CANCELLED.value:
                self._interrupt(run.job.execution_id)

    def _interrupt(self, execution_id: str) -> None:
        found = self._running.get(execution_id)
        if found is not None:
            found[1].cancel_requested = True
            found[0].cancel()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """``orq executor``: run until ``stop`` is set."""
    async with (
        Service(settings, stop, redis_connections=max(16, settings.executor_concurrency)) as service,
        httpx.AsyncClient(follow_redirects=False) as client,
    ):
        actions = Actions(client, allow_private=settings.allow_private_networks)
        executor = Executor(settings, service.redis, service.committer, actions)
        await service.serve_metrics(lambda: [
            gauge("orq_executor_slots_busy", "Execution slots of this executor in use.",
                  executor.slots - executor.free),
            gauge("orq_executor_slots", "Execution slots of this executor.", executor.slots),
        ])
        await executor.run(stop)
