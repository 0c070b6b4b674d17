"""The robot's loop: who am I, then poll, run, report — ``concurrency`` times side by side — until SIGTERM.

On SIGTERM the robot stops taking tasks (a long poll under way is abandoned) and gives the tasks it is running
``grace_s`` to finish and be reported. A task still running then is stopped and *given back by silence*: no
more heartbeats, no report, so the server offers it again once its lease runs out (counted like a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import httpx

from services.robot.client import Identity, RequestRefused, RobotClient, Task
from services.robot.reconnect import Backoff, Reconnect, Stopped
from services.robot.task import TaskRun
from shared.domain.actions.runtime import Actions
from shared.infra.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RobotOptions:
    """What ``orq robot`` was started with."""

    url: str
    key: str
    pool: str | None = None
    concurrency: int = 1
    grace_s: float = 30.0
    wait_s: float = 20.0
    backoff: Backoff = field(default_factory=Backoff)


async def serve(options: RobotOptions, stop: asyncio.Event) -> None:
    """Run the robot until ``stop`` is set; ``ConfigError`` when the key or ``--pool`` is wrong."""
    async with RobotClient(options.url, options.key) as client, httpx.AsyncClient() as action_http:
        reconnect = Reconnect(client.url, options.backoff)
        try:
            me = await reconnect.call(client.me, stop=stop)
        except Stopped:
            return
        except RequestRefused as exc:
            raise ConfigError(f"{client.url} refused the robot key: {exc.message}") from None
        if options.pool is not None and options.pool != me.pool:
            raise ConfigError(f"this key's robot, {me.name!r}, is in pool {me.pool!r}, not {options.pool!r} (--pool)")
        log.info("robot %s (pool %s) connected to %s, %d at a time", me.name, me.pool, client.url, options.concurrency)
        # The robot runs on the customer's own machine, inside their network: their private addresses are what
        # its http_request steps are for, so the SaaS-side SSRF guard does not apply here.
        actions = Actions(action_http, allow_private=True)
        await Robot(options, client, actions, reconnect, me).serve(stop)


class Robot:
    """The workers of one robot process, and their drain."""

    def __init__(self, options: RobotOptions, client: RobotClient, actions: Actions, reconnect: Reconnect,
                 me: Identity) -> None:
        self._options = options
        self._client = client
        self._actions = actions
        self._reconnect = reconnect
        self._me = me

    async def serve(self, stop: asyncio.Event) -> None:
        workers = [asyncio.create_task(self._work(stop)) for _ in range(max(1, self._options.concurrency))]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *workers], return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # a worker that ended on its own ended on a fatal error: the others stop too
        stopping.cancel()
        _, late = await asyncio.wait(workers, timeout=self._options.grace_s)
        for worker in late:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for worker in workers:
            if not worker.cancelled() and (exc := worker.exception()) is not None:
                raise exc

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            task = await self._poll(stop)
            if task is not None:
                await self._run(task)

    async def _poll(self, stop: asyncio.Event) -> Task | None:
        """The next task, or ``None`` (nothing offered during the wait, or told to stop)."""
        poll = asyncio.create_task(self._reconnect.call(lambda: self._client.next_task(self._options.wait_s),
                                                        stop=stop))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if poll not in done:
            # A task the server hands out just as the poll is abandoned is offered again after its lease.
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError, Stopped):
                await poll
            return None
        with contextlib.suppress(Stopped):
            return poll.result()
        return None

    async def _run(self, task: Task) -> None:
        started = time.monotonic()
        ids = {"execution_id": task.execution_id, "step_index": task.step_index, "task_id": task.task_id}
        run = TaskRun(task, self._client, self._actions, self._reconnect, self._me.tenant_id)
        try:
            ended = await run.run()
        except asyncio.CancelledError:
            log.warning("task %s (%s, execution %s step %d) given back: the shutdown grace ran out", task.task_id,
                        task.action, task.execution_id, task.step_index, extra=ids)
            raise
        except Exception as exc:  # the top of the task's life: the robot goes on with the next one
            log.exception("task %s (%s, execution %s step %d) ended in error: %s", task.task_id, task.action,
                          task.execution_id, task.step_index, exc, extra=ids)
            return
        log.info("task %s (%s, execution %s step %d, attempt %d) %s in %d ms", task.task_id, task.action,
                 task.execution_id, task.step_index, task.attempt, ended, (time.monotonic() - started) * 1000,
                 extra=ids)
