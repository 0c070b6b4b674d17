"""One task on this robot: run its action, keep its lease alive, report the outcome.

While the action runs, a heartbeat goes every third of the lease (sooner when the action reports progress).
A heartbeat answered 409 (``lease_lost``, ``cancelled``) stops the action at once; so does a lease that ran
out because no heartbeat got through. A stopped task reports nothing: the server has already moved on, and a
stale call would be refused anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from services.robot.client import FailureKind, RequestRefused, RobotClient, Task, TaskStopped
from services.robot.reconnect import GaveUp, Reconnect
from shared.domain.actions.runtime import Actions
from shared.infra.errors import StepFailed

log = logging.getLogger(__name__)
# The server's bounds (services/api/schemas.py): a failure's or a heartbeat's message up to 2000 characters, a log
# line up to 10000. The start of a long text says what went wrong (a plug-in may raise megabytes).
MAX_MESSAGE_CHARS = 2000
MAX_LOG_CHARS = 10_000
LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


def heartbeat_interval_s(lease_s: float) -> float:
    """A heartbeat every third of the lease: two may be lost (or slow) before the lease runs out."""
    return max(lease_s, 0.1) / 3


def failure_kind(exc: BaseException) -> FailureKind:
    """``business`` when the exception says so (an attribute ``kind = "business"``: a plug-in marks a failure no
    retry can fix, e.g. an invoice that does not exist); ``application`` for everything else."""
    return "business" if getattr(exc, "kind", None) == "business" else "application"


@dataclass(frozen=True, slots=True)
class Completed:
    output: Any


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    kind: FailureKind


Outcome = Completed | Failed


class RobotContext:
    """The ``ActionContext`` of a task: log lines go to ``/logs``, progress with the next (immediate) heartbeat."""

    def __init__(self, run: TaskRun, tenant_id: str) -> None:
        self._run = run
        self.execution_id = run.task.execution_id
        self.tenant_id = tenant_id
        self.step_index = run.task.step_index
        self.attempt = run.task.attempt

    async def log(self, message: str, level: str = "info") -> None:
        if message:  # the server takes no empty line
            await self._run.send_log(message[:MAX_LOG_CHARS], level if level in LOG_LEVELS else "info")

    async def progress(self, percent: float, message: str | None = None) -> None:
        shown = None if message is None else message[:MAX_MESSAGE_CHARS]
        self._run.report_progress(max(0.0, min(100.0, percent)), shown)


class TaskRun:
    """The life of one task on this robot, from its claim to its report (or its stop)."""

    def __init__(self, task: Task, client: RobotClient, actions: Actions, reconnect: Reconnect,
                 tenant_id: str) -> None:
        self.task = task
        self._client = client
        self._actions = actions
        self._reconnect = reconnect
        self._tenant_id = tenant_id
        self._lease_s = task.lease_s
        self._lease_ends = time.monotonic() + task.lease_s
        self._progress: tuple[float, str | None] | None = None
        self._wake = asyncio.Event()
        self._stopped_by: str | None = None
        self._action: asyncio.Task[Outcome] | None = None

    async def run(self) -> str:
        """Run the task to its end; how it ended, for the log line. Cancelling this (the robot's shutdown grace
        ran out) stops the action and the heartbeats, and reports nothing: the task is offered again once its
        lease runs out."""
        self._action = asyncio.create_task(self._perform(RobotContext(self, self._tenant_id)))
        heartbeats = asyncio.create_task(self._heartbeats())
        try:
            outcome = await self._action
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopped_by is None or (current is not None and current.cancelling()):
                raise
            return f"stopped: {self._stopped_by}"
        finally:
            heartbeats.cancel()
        return await self._report(outcome)

    # --- the action --------------------------------------------------------------------------------------
    async def _perform(self, ctx: RobotContext) -> Outcome:
        """The action's outcome; whatever goes wrong inside it (bad params, a plug-in's bug) is a failure."""
        try:
            parsed = self._actions.parse(self.task.action, self.task.params)
            output = await self._actions.runner(self.task.action)(parsed, ctx)
            msgspec.json.encode(output)
        except StepFailed as exc:
            return Failed(exc.message, failure_kind(exc))
        except msgspec.EncodeError as exc:
            return Failed(f"step output is not serialisable: {exc}", "application")
        except Exception as exc:  # an action is foreign code: its error is the task's failure, not the robot's
            return Failed(f"{type(exc).__name__}: {exc}", failure_kind(exc))
        return Completed(output)

    def stop(self, reason: str) -> None:
        """The server (or the lease) says this task is no longer ours: stop its action now."""
        if self._stopped_by is None:
            self._stopped_by = reason
        if self._action is not None:
            self._action.cancel()

    # --- lease -------------------------------------------------------------------------------------------
    def report_progress(self, percent: float, message: str | None) -> None:
        self._progress = (percent, message)
        self._wake.set()  # the next heartbeat carries it, now; progress reported faster than it goes is coalesced

    async def _heartbeats(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=heartbeat_interval_s(self._lease_s))
            except TimeoutError:
                pass
            self._wake.clear()
            percent, message = self._progress or (None, None)
            self._progress = None
            try:
                self._lease_s = await self._reconnect.call(partial(self._client.heartbeat, self.task.task_id, percent,
                                                                   message), deadline=self._lease_ends)
            except TaskStopped as exc:
                self.stop(exc.reason)
                return
            except RequestRefused as exc:
                self.stop(exc.error_code or f"refused ({exc.status})")
                return
            except GaveUp:
                self.stop("lease_lost (no heartbeat got through)")
                return
            self._lease_ends = time.monotonic() + self._lease_s

    async def send_log(self, message: str, level: str) -> None:
        """One line to ``/logs``, retried while the lease lasts, then dropped: a log line is never worth the task."""
        try:
            await self._reconnect.call(
                lambda: self._client.logs(self.task.task_id, [{"level": level, "message": message}]),
                deadline=self._lease_ends)
        except TaskStopped as exc:
            self.stop(exc.reason)
        except (RequestRefused, GaveUp) as exc:
            log.warning("task %s: log line dropped: %s", self.task.task_id, exc, extra=self._ids())

    # --- the report --------------------------------------------------------------------------------------
    async def _report(self, outcome: Outcome) -> str:
        try:
            return await self._reconnect.call(lambda: self._send(outcome), deadline=self._lease_ends)
        except TaskStopped as exc:
            return f"result refused: {exc.reason}"
        except GaveUp:
            return "result not delivered: the server was unreachable until the lease ran out"

    async def _send(self, outcome: Outcome) -> str:
        if isinstance(outcome, Failed):
            await self._client.fail(self.task.task_id, outcome.message[:MAX_MESSAGE_CHARS] or "failed", outcome.kind)
            return f"failed ({outcome.kind}): {outcome.message}"
        try:
            await self._client.complete(self.task.task_id, outcome.output)
        except RequestRefused as exc:  # e.g. an output over the server's limit: the step fails, saying why
            await self._client.fail(self.task.task_id, exc.message[:MAX_MESSAGE_CHARS], "application")
            return f"failed (application): {exc.message}"
        return "completed"

    def _ids(self) -> dict[str, Any]:
        return {"execution_id": self.task.execution_id, "step_index": self.task.step_index,
                "task_id": self.task.task_id}
