"""Firing a trigger: ``trigger.fired`` and the execution it requests, admitted in one atomic unit.

Every trigger type (the webhook route in the API, the schedule, mailbox, file and chaining loops of the
trigger service) fires through :meth:`Firer.fire`. The unit is :func:`shared.domain.executions.admission.admission_unit`
(quota, backlog, priority and fair share, exactly as the execute endpoint) plus, in the same Lua call:

- guards: the trigger is enabled, not deleted, and still at the revision read (an edit or another firing in
  between makes us read again); each :class:`Claim` is still unclaimed;
- ops: ``trigger.fired``, the trigger's counters, and the claims (a schedule tick, a webhook signature, a
  mail, a file, a source event), so a crash can neither fire twice nor lose a firing, and any number of
  trigger services racing for the same thing fire it once.

A firing that is due but cannot request an execution (quota, full backlog, overlap, workflow deleted) appends
``trigger.skipped`` instead, with the claims when the caller must not try again (a tick, a file).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from shared.domain.aggregates import Status, read_tenant, read_workflow
from shared.domain.executions.admission import (
    BACKLOG_GUARD,
    QUOTA_GUARD,
    WORKFLOW_CHANGED_GUARD,
    WORKFLOW_GONE_GUARD,
    Run,
    admission_unit,
)
from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import read_execution
from shared.domain.triggers.definitions import REV_GUARD, TriggerState, read_trigger
from shared.infra.clock import month_of, new_id
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.infra.plans import Plan, plan_named
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Refused, Unit
from shared.log.events import QuotaExceeded, TriggerFired, TriggerSkipped, TriggerSkipReason

log = logging.getLogger(__name__)

CLAIM_GUARD = "claimed"
LIVE_GUARD = "trigger_gone"
OVERLAP_GUARD = "overlap"
# More rounds than the default on purpose: a firing has no caller to answer "try again" (one given up is
# logged and reported as NotFired("busy")).
FIRE_ATTEMPTS = 5
_UNFINISHED = frozenset({Status.QUEUED.value, Status.RUNNING.value, Status.RETRYING.value})
_FINISHED_OR_GONE = ["", Status.COMPLETED.value, Status.FAILED.value, Status.CANCELLED.value]


class Claim(Protocol):
    """Something handled at most once: a guard that it is still unclaimed, and the ops that claim it."""

    def add(self, unit: Unit) -> None: ...


@dataclass(frozen=True, slots=True)
class Once:
    """A key the handling unit sets (``SET`` with a TTL); while it exists, nobody handles the same thing."""

    key: str
    ttl_s: int

    def add(self, unit: Unit) -> None:
        unit.require_absent(self.key, CLAIM_GUARD)
        unit.set(self.key, "1", self.ttl_s)


@dataclass(frozen=True, slots=True)
class Swap:
    """A hash field that must still hold ``expected`` ("" = missing) and then holds ``value`` (compare-and-set)."""

    key: str
    field: str
    expected: str
    value: str

    def add(self, unit: Unit) -> None:
        unit.require(self.key, self.field, [self.expected], CLAIM_GUARD)
        unit.hset(self.key, {self.field: self.value})


@dataclass(frozen=True, slots=True)
class Request:
    """One firing: the run's ``params``, what fired it (``source``) and what it claims."""

    params: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    claims: Sequence[Claim] = ()
    parent_execution_id: str | None = None
    skip_if_running: bool = False
    consume_on_skip: bool = True
    execution_id: str | None = None  # when a claim must name the execution (a queue item's)
    max_attempts: int | None = None  # overrides the workflow's retry.attempts (a queue item's run: 1)


@dataclass(frozen=True, slots=True)
class Fired:
    execution_id: str
    trigger: TriggerState


@dataclass(frozen=True, slots=True)
class Skipped:
    """Due, recorded as ``trigger.skipped``; ``used``/``limit`` are set for a quota refusal."""

    reason: TriggerSkipReason
    used: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True)
class NotFired:
    """Nothing was recorded: the trigger is gone or disabled (``gone``) or someone handled it (``claimed``)."""

    reason: str


Outcome = Fired | Skipped | NotFired


class Firer:
    """Fires triggers through one committer (shared with the rest of the process)."""

    def __init__(self, redis: Redis, committer: Committer, settings: Settings) -> None:
        self.redis = redis
        self.committer = committer
        self.settings = settings
        self.definitions = PinnedDefinitions()

    def plan(self, name: str) -> Plan:
        return plan_named(self.settings.plans, name)

    async def fire(self, p: int, trigger_id: str, request: Request, now_ms: int) -> Outcome:
        """Fire ``trigger_id`` once for ``request`` (re-reading after a concurrent edit, a few times)."""

        async def busy() -> Outcome:
            log.warning("trigger %s kept changing under a firing; giving up this one", trigger_id)
            return NotFired("busy")

        return await optimistically(lambda: self._attempt(p, trigger_id, request, now_ms),
                                    attempts=FIRE_ATTEMPTS, exhausted=busy)

    async def _attempt(self, p: int, trigger_id: str, request: Request, now_ms: int) -> Outcome | Moved:
        """One read-decide-commit round; MOVED when the state moved under it (read again)."""
        trigger = await read_trigger(self.redis, p, trigger_id)
        if trigger is None or not trigger.live:
            return NotFired("gone")
        tenant = await read_tenant(self.redis, self.settings.partitions, trigger.tenant_id)
        if tenant is None:
            return NotFired("gone")
        workflow = await read_workflow(self.redis, p, trigger.workflow_id)
        definition = None
        if workflow is not None and not workflow.deleted:
            definition = await self.definitions.read(self.redis, p, workflow.id, workflow.version)
        if workflow is None or definition is None:
            return await self.skip(trigger, request, "workflow_deleted", now_ms)
        if request.skip_if_running and trigger.last_execution_id:
            last = await read_execution(self.redis, p, trigger.last_execution_id, fields=("status",))
            if last is not None and last.status in _UNFINISHED:
                return await self.skip(trigger, request, "overlap", now_ms)
        plan = self.plan(tenant.plan)
        execution_id = request.execution_id or new_id()
        priority = max(int(trigger.config.get("priority") or plan.default_priority), plan.min_priority)
        unit = admission_unit(
            p=p,
            tenant_id=trigger.tenant_id,
            plan=plan,
            workflow=workflow,
            definition=definition,
            runs=[Run(execution_id, priority, {**trigger.config.get("params", {}), **request.params})],
            now_ms=now_ms,
            trigger_type=trigger.type,
            parent_execution_id=request.parent_execution_id,
            max_attempts=request.max_attempts,
        )
        self._add_trigger_part(unit, trigger, request, execution_id, now_ms)
        outcome = await self.committer.commit(unit)
        if isinstance(outcome, Applied):
            return Fired(execution_id, trigger)
        assert isinstance(outcome, Refused)
        return await self._refused(trigger, request, outcome, plan, now_ms)

    @staticmethod
    def _add_trigger_part(unit: Unit, trigger: TriggerState, request: Request, execution_id: str,
                          now_ms: int) -> None:
        """The trigger's guards (first), claims, ``trigger.fired`` and counters, into the admission unit."""
        p = trigger.partition
        admission_guards = len(unit.guards)
        _require_live(unit, trigger)
        unit.require(keys.trigger(p, trigger.id), "rev", [str(trigger.rev)], REV_GUARD)
        if request.skip_if_running and trigger.last_execution_id:
            unit.require(keys.execution(p, trigger.last_execution_id), "status", _FINISHED_OR_GONE, OVERLAP_GUARD)
        for claim in request.claims:
            claim.add(unit)
        # Trigger guards first: a claimed tick or an edited trigger is reported as such, not as a quota refusal.
        unit.guards = unit.guards[admission_guards:] + unit.guards[:admission_guards]
        fired = trigger.snapshot(revision=trigger.rev + 1, trigger_count=trigger.count + 1, last_triggered_at=now_ms)
        unit.event(TriggerFired(tenant_id=trigger.tenant_id, aggregate_id=trigger.id, ts=now_ms, trigger=fired,
                                execution_id=execution_id, source=request.source))
        unit.hset(keys.trigger(p, trigger.id), {"rev": trigger.rev + 1, "count": trigger.count + 1,
                                                 "last_fired_at": now_ms, "last_execution_id": execution_id})

    async def _refused(self, trigger: TriggerState, request: Request, refused: Refused, plan: Plan,
                       now_ms: int) -> Outcome | Moved:
        match refused.label:
            case label if label in (REV_GUARD, WORKFLOW_CHANGED_GUARD, OVERLAP_GUARD):
                return MOVED
            case label if label == QUOTA_GUARD:
                return await self.skip(trigger, request, "quota", now_ms, used=int(refused.actual or 0), plan=plan)
            case label if label == BACKLOG_GUARD:
                return await self.skip(trigger, request, "backlog_full", now_ms)
            case label if label == WORKFLOW_GONE_GUARD:
                return await self.skip(trigger, request, "workflow_deleted", now_ms)
            case label if label == CLAIM_GUARD:
                return NotFired("claimed")
            case label if label == LIVE_GUARD:
                return NotFired("gone")
            case label:  # a caller's own claim guard (an item no longer new, a full trigger)
                return NotFired(label)

    async def skip(self, trigger: TriggerState, request: Request, reason: TriggerSkipReason, now_ms: int,
                   *, ticks: int = 1, used: int = 0, plan: Plan | None = None) -> Outcome:
        """Record that a due firing requested no execution (with the claims, unless the caller may retry)."""
        p = trigger.partition
        unit = Unit(p)
        _require_live(unit, trigger)
        if request.consume_on_skip:
            for claim in request.claims:
                claim.add(unit)
        unit.event(TriggerSkipped(tenant_id=trigger.tenant_id, aggregate_id=trigger.id, ts=now_ms,
                                  workflow_id=trigger.workflow_id, trigger_type=trigger.type, reason=reason,
                                  ticks=ticks, source=request.source))
        limit = plan.monthly_quota if plan is not None else 0
        if reason == "quota":
            # What the execute endpoint appends when it answers 429, so usage reports see trigger refusals too.
            unit.event(QuotaExceeded(tenant_id=trigger.tenant_id, aggregate_id=trigger.tenant_id, ts=now_ms,
                                     limit=limit, used=used, requested=1, month=month_of(now_ms)))
        outcome = await self.committer.commit(unit)
        if isinstance(outcome, Refused):
            return NotFired("claimed" if outcome.label == CLAIM_GUARD else "gone")
        log.info("trigger %s skipped a firing: %s", trigger.id, reason, extra={"trigger_id": trigger.id})
        return Skipped(reason, used=used, limit=limit)


def _require_live(unit: Unit, trigger: TriggerState) -> None:
    key = keys.trigger(trigger.partition, trigger.id)
    unit.require(key, "enabled", ["1"], LIVE_GUARD)
    unit.require(key, "deleted", ["0"], LIVE_GUARD)
