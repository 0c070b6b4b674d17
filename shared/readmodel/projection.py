"""The pure fold of events into projection rows: the one definition of what every SQL table holds.

A :class:`Projection` keeps rows of the tables in :mod:`shared.readmodel.schema` as plain dicts keyed by primary
key. Seed it with the rows a batch touches (:meth:`Projection.load`, from SQL), :meth:`Projection.apply`
the batch, then write :meth:`Projection.changes` back. Folding a log in one batch or in many (through
SQL round trips) gives the same rows: every value is a function of the rows and the event alone, counters
of steps are recounted from the step rows, and JSON values are normalised to what SQL gives back.

Re-applying an event is harmless: an event whose stream id is not after the last one applied for its
tenant is skipped (a tenant's events all live in one partition's log, in order), and the creating events
(``execution.queued``, ``tenant.created``, ``workflow.saved``) do nothing when their row already exists
at that version. Across batches the projector's checkpoint does the rest.

Decisions where the product brief is silent (see ``services/projector/README.md``):

- ``execution.requeued`` starts a new attempt series: besides status/attempt/priority it clears
  ``completed_at``, ``duration_ms``, ``result`` and the DLQ flags (``dead_lettered``, ``in_dlq``,
  ``dead_lettered_at``). The series' first ``execution.started`` (the one that finds the row ``queued``)
  sets ``started_at``: ``started_at`` is the start of the last attempt series, and ``duration_ms`` runs from
  it to the end (time spent in the DLQ or queued for a DLQ retry is not counted; backoff between the
  attempts of one series is). ``execution.completed``'s own ``duration_ms`` (the executor measures from the
  first start it ever saw) is used only where it is not longer than that.
- ``execution.dead_lettered`` of a run that never got an ``execution.failed`` (a poison run) also marks it
  ``failed`` with the event's error, so no dead-lettered execution stays ``running``.
- ``execution.cancelled`` closes the step that was running: ``cancelled``, with ``completed_at`` and
  ``duration_ms``; the execution gets its ``duration_ms`` too.
- ``error_message`` is the outcome's: ``execution.retrying`` and ``execution.failed`` set it,
  ``execution.completed`` clears it. Earlier attempts' errors stay on their step rows: ``step.started`` and
  ``step.completed`` keep a step's ``error_message`` (the error of its last failed attempt, with
  ``attempts`` counting its starts).
- ``progress`` counts completed steps: ``floor(100 * steps_completed / steps_total)``, plus the running
  step's share of its own ``execution.progress`` report; ``execution.completed`` sets it to 100.
- ``step.started`` for a step a definition did not list creates the row from the event.
- Strings are clipped to their column's length, so SQLite and MySQL hold the same value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.domain.aggregates import Status
from shared.domain.executions.state import ExecutionState, changes_of
from shared.infra.clock import month_of, stream_id_parts
from shared.log.events import (
    Event,
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionDlqPurged,
    ExecutionFailed,
    ExecutionLog,
    ExecutionPriorityChanged,
    ExecutionProgress,
    ExecutionQueued,
    ExecutionRecovered,
    ExecutionRequeued,
    ExecutionRetrying,
    ExecutionStarted,
    NotificationFailed,
    NotificationQueued,
    NotificationResendRequested,
    NotificationSent,
    RobotDeleted,
    RobotRegistered,
    StepClaimed,
    StepCompleted,
    StepFailed,
    StepOffered,
    StepStarted,
    StepWaiting,
    TenantCreated,
    TenantPaused,
    TenantPlanChanged,
    TenantResumed,
    TriggerDeleted,
    TriggerFired,
    TriggerSaved,
    WorkflowDeleted,
    WorkflowPaused,
    WorkflowResumed,
    WorkflowSaved,
)
from shared.readmodel.queue_fold import QUEUE_EVENTS, QUEUE_PRIMARY_KEYS, QUEUE_TABLES, fold_queue_event

Row = dict[str, Any]
Key = Any  # a primary key: a str, or a tuple for composite keys

TENANTS = "tenants"
API_KEYS = "api_keys"
WORKFLOWS = "workflows"
EXECUTIONS = "executions"
STEPS = "execution_steps"
LOGS = "execution_logs"
USAGE = "usage_monthly"
NOTIFICATIONS = "notifications"
TRIGGERS = "workflow_triggers"
ROBOTS = "robots"
TABLES = (TENANTS, API_KEYS, WORKFLOWS, EXECUTIONS, STEPS, LOGS, USAGE, NOTIFICATIONS, TRIGGERS, *QUEUE_TABLES, ROBOTS)

# Primary key columns per table, in order (mirrors shared.readmodel.schema).
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    TENANTS: ("id",),
    API_KEYS: ("id",),
    WORKFLOWS: ("id",),
    EXECUTIONS: ("id",),
    STEPS: ("execution_id", "step_index"),
    LOGS: ("execution_id", "event_id"),
    USAGE: ("tenant_id", "month"),
    NOTIFICATIONS: ("id",),
    TRIGGERS: ("id",),
    **QUEUE_PRIMARY_KEYS,
    ROBOTS: ("id",),
}

# Status values of execution rows and step rows.
QUEUED, RUNNING, RETRYING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "running",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)
PENDING = "pending"
OFFERED = "offered"  # a ``runs_on`` step waiting for a robot of its pool
_FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

# Events about one execution (its id is the aggregate id).
_EXECUTION_EVENTS: tuple[type[EventBase], ...] = (
    ExecutionQueued,
    ExecutionStarted,
    ExecutionProgress,
    ExecutionLog,
    ExecutionRetrying,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionDeadLettered,
    ExecutionCancelled,
    ExecutionPriorityChanged,
    ExecutionRequeued,
    ExecutionRecovered,
    ExecutionDlqPurged,
    StepStarted,
    StepCompleted,
    StepFailed,
    StepOffered,
    StepClaimed,
    StepWaiting,
)


def key_of(table: str, row: Mapping[str, Any]) -> Key:
    """The primary key of ``row`` in ``table`` (a tuple for composite keys)."""
    cols = PRIMARY_KEYS[table]
    if len(cols) == 1:
        return row[cols[0]]
    return tuple(row[c] for c in cols)


_PLAIN_JSON = (str, int, bool)


def json_value(value: Any) -> Any:
    """A value as a JSON column gives it back: builtins only (Structs to dicts, bytes to base64, …)."""
    if value is None or type(value) in _PLAIN_JSON:
        return value
    return msgspec.json.decode(msgspec.json.encode(value))


_months: dict[int, str] = {}


def _month(ts: int) -> str:
    """``month_of`` memoised per day (every queued execution needs it)."""
    day = ts // 86_400_000
    month = _months.get(day)
    if month is None:
        if len(_months) > 10_000:
            _months.clear()
        month = _months[day] = month_of(ts)
    return month


def _clip(value: str | None, length: int) -> str | None:
    return value if value is None or len(value) <= length else value[:length]


@dataclass(slots=True)
class Needs:
    """Primary keys a batch of events reads: what to load from SQL before folding it."""

    tenants: set[str] = field(default_factory=set)
    workflows: set[str] = field(default_factory=set)
    executions: set[str] = field(default_factory=set)
    usage: set[tuple[str, str]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.tenants or self.workflows or self.executions or self.usage)


def needs_of(events: Iterable[EventBase], *, never_applied: bool = False) -> Needs:
    """The rows folding ``events`` reads (steps are loaded with their execution).

    ``never_applied``: the caller guarantees none of ``events`` was folded into the stored rows before
    (the projector's checkpoint does, and so does a replay into emptied tables). Then an execution queued in
    ``events`` cannot have a row yet, and is not looked up.
    """
    needs = Needs()
    queued: set[str] = set()
    for event in events:
        match event:
            case StepStarted() | StepCompleted() | StepFailed() | StepOffered() | StepClaimed() | StepWaiting():
                needs.executions.add(event.aggregate_id)
            case ExecutionQueued():
                queued.add(event.aggregate_id)
                needs.usage.add((event.tenant_id, _month(event.ts)))
            case _ if isinstance(event, _EXECUTION_EVENTS):
                needs.executions.add(event.aggregate_id)
            case TenantCreated() | TenantPlanChanged() | TenantPaused() | TenantResumed():
                needs.tenants.add(event.tenant_id)
            case WorkflowSaved() | WorkflowDeleted() | WorkflowPaused() | WorkflowResumed():
                needs.workflows.add(event.aggregate_id)
            case _:
                pass
    if never_applied:
        needs.executions -= queued
    else:
        needs.executions |= queued
    return needs


class Projection:
    """In-memory rows of every projection table, and the fold that changes them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Key, Row]] = {name: {} for name in TABLES}
        self.dirty: dict[str, set[Key]] = {name: set() for name in TABLES}
        self._steps_of: dict[str, set[int]] = {}
        self._applied: dict[str, tuple[int, int]] = {}

    # --- rows in and out ------------------------------------------------------------------------------------
    def load(self, table: str, rows: Iterable[Mapping[Any, Any]]) -> None:
        """Seed rows read from SQL; rows already held (possibly changed) win."""
        held = self.rows[table]
        for raw in rows:
            row = dict(raw)
            key = key_of(table, row)
            if key in held:
                continue
            held[key] = row
            if table == STEPS:
                self._steps_of.setdefault(row["execution_id"], set()).add(row["step_index"])

    def missing(self, needs: Needs) -> Needs:
        """The part of ``needs`` not held in memory yet (what a cache still has to load)."""
        return Needs(
            tenants={k for k in needs.tenants if k not in self.rows[TENANTS]},
            workflows={k for k in needs.workflows if k not in self.rows[WORKFLOWS]},
            executions={k for k in needs.executions if k not in self.rows[EXECUTIONS]},
            usage={k for k in needs.usage if k not in self.rows[USAGE]},
        )

    def changes(self) -> dict[str, list[Row]]:
        """Rows changed since the last :meth:`mark_clean`, per table (tables without changes omitted)."""
        out: dict[str, list[Row]] = {}
        for table, keys in self.dirty.items():
            if keys:
                held = self.rows[table]
                out[table] = [held[k] for k in sorted(keys, key=_sort_key)]
        return out

    def mark_clean(self) -> None:
        for keys in self.dirty.values():
            keys.clear()

    def drop_written(self) -> None:
        """Forget rows the fold only ever writes (logs, API keys) once they are clean: a cache keeps the rest."""
        for table in (LOGS, API_KEYS, NOTIFICATIONS, TRIGGERS, *QUEUE_TABLES, ROBOTS):
            if not self.dirty[table]:
                self.rows[table].clear()

    def evict(self) -> None:
        """Forget every held row (they must have been written); the applied-id watermarks are kept."""
        for table in TABLES:
            self.rows[table].clear()
            self.dirty[table].clear()
        self._steps_of.clear()

    def size(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    # --- the fold -------------------------------------------------------------------------------------------
    def apply_all(self, events: Iterable[Event]) -> int:
        return sum(self.apply(event) for event in events)

    def apply(self, event: Event | EventBase) -> bool:
        """Fold one event; False when it was skipped as already applied. Unknown types change nothing."""
        if event.id:
            position = stream_id_parts(event.id)
            last = self._applied.get(event.tenant_id)
            if last is not None and position <= last:
                return False
            self._applied[event.tenant_id] = position
        match event:  # most frequent first
            case StepStarted() | StepCompleted() | StepFailed() | StepOffered() | StepClaimed() | StepWaiting():
                self._step(event)
            case ExecutionQueued():
                self._queued(event)
            case _ if isinstance(event, _EXECUTION_EVENTS):
                self._execution(event)
            case TenantCreated() | TenantPlanChanged() | TenantPaused() | TenantResumed():
                self._tenant(event)
            case WorkflowSaved() | WorkflowDeleted() | WorkflowPaused() | WorkflowResumed():
                self._workflow(event)
            case NotificationQueued() | NotificationSent() | NotificationFailed() | NotificationResendRequested():
                self._notification(event)
            case TriggerSaved() | TriggerDeleted() | TriggerFired():
                self._trigger(event)
            case _ if isinstance(event, QUEUE_EVENTS):
                fold_queue_event(self.rows, self._touch, event)
            case RobotRegistered() | RobotDeleted():
                self._robot(event)
            case _:
                pass
        return True

    def _touch(self, table: str, key: Key) -> None:
        self.dirty[table].add(key)

    # --- tenants and workflows ------------------------------------------------------------------------------
    def _tenant(self, event: TenantCreated | TenantPlanChanged | TenantPaused | TenantResumed) -> None:
        tenants = self.rows[TENANTS]
        row = tenants.get(event.tenant_id)
        match event:
            case TenantCreated():
                if row is not None:
                    return
                tenants[event.tenant_id] = {
                    "id": event.tenant_id,
                    "name": _clip(event.name, 200),
                    "plan": _clip(event.plan, 50),
                    "paused": False,
                    "created_at": event.ts,
                    "updated_at": event.ts,
                }
                self.rows[API_KEYS][event.api_key_id] = {
                    "id": event.api_key_id,
                    "tenant_id": event.tenant_id,
                    "key_hash": event.api_key_hash,
                    "prefix": _clip(event.api_key_prefix, 40),
                    "created_at": event.ts,
                    "revoked": False,
                }
                self._touch(API_KEYS, event.api_key_id)
            case TenantPlanChanged():
                if row is None:
                    return
                row["plan"] = _clip(event.plan, 50)
                row["updated_at"] = event.ts
            case TenantPaused() | TenantResumed():
                if row is None:
                    return
                row["paused"] = isinstance(event, TenantPaused)
                row["updated_at"] = event.ts
        self._touch(TENANTS, event.tenant_id)

    def _workflow(self, event: WorkflowSaved | WorkflowDeleted | WorkflowPaused | WorkflowResumed) -> None:
        workflows = self.rows[WORKFLOWS]
        row = workflows.get(event.aggregate_id)
        match event:
            case WorkflowSaved():
                if row is not None and row["version"] >= event.version:
                    return
                if row is None:
                    row = workflows[event.aggregate_id] = {
                        "id": event.aggregate_id,
                        "tenant_id": event.tenant_id,
                        "deleted": False,
                        "paused": False,
                        "created_at": event.ts,
                    }
                row["name"] = _clip(event.definition.name, 200)
                row["version"] = event.version
                row["definition"] = json_value(event.definition)
                row["updated_at"] = event.ts
            case WorkflowDeleted():
                if row is None:
                    return
                row["deleted"] = True
                row["updated_at"] = event.ts
            case WorkflowPaused() | WorkflowResumed():
                if row is None:
                    return
                row["paused"] = isinstance(event, WorkflowPaused)
                row["updated_at"] = event.ts
        self._touch(WORKFLOWS, event.aggregate_id)

    # --- notifications --------------------------------------------------------------------------------------
    def _notification(
        self, event: NotificationQueued | NotificationSent | NotificationFailed | NotificationResendRequested
    ) -> None:
        """The whole row from the event alone (each carries its notification's identity): nothing is read."""
        row: Row = {
            "id": event.aggregate_id,
            "tenant_id": event.tenant_id,
            "execution_id": event.execution_id,
            "workflow_id": event.workflow_id,
            "trigger": event.trigger,
            "channel": event.channel,
            "target": _clip(event.target, 2000),
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": None,
            "created_at": event.created_at,
            "updated_at": event.ts,
            "delivered_at": None,
        }
        match event:
            case NotificationSent():
                row.update(status="sent", attempts=event.attempt, last_status_code=event.status_code,
                           delivered_at=event.ts)
            case NotificationFailed():
                row.update(status="failed" if event.final else "retrying", attempts=event.attempt,
                           last_status_code=event.status_code, last_error=event.error,
                           delivered_at=event.delivered_at)
            case NotificationResendRequested():
                row.update(attempts=event.attempts, delivered_at=event.delivered_at)
            case _:
                pass
        self.rows[NOTIFICATIONS][event.aggregate_id] = row
        self._touch(NOTIFICATIONS, event.aggregate_id)

    # --- triggers -------------------------------------------------------------------------------------------
    def _trigger(self, event: TriggerSaved | TriggerDeleted | TriggerFired) -> None:
        """The whole row from the event's snapshot of its trigger: nothing is read (``trigger.skipped`` changes
        no row)."""
        t = event.trigger
        self.rows[TRIGGERS][event.aggregate_id] = {
            "id": event.aggregate_id,
            "tenant_id": event.tenant_id,
            "workflow_id": t.workflow_id,
            "trigger_type": _clip(t.trigger_type, 30),
            "config": json_value(t.config),
            "enabled": t.enabled,
            "deleted": isinstance(event, TriggerDeleted),
            "revision": t.revision,
            "trigger_count": t.trigger_count,
            "last_triggered_at": t.last_triggered_at,
            "created_at": t.created_at,
            "updated_at": event.ts,
        }
        self._touch(TRIGGERS, event.aggregate_id)

    # --- robots ---------------------------------------------------------------------------------------------
    def _robot(self, event: RobotRegistered | RobotDeleted) -> None:
        """The whole row from the event alone (``robot.deleted`` repeats the registration): nothing is read."""
        deleted = isinstance(event, RobotDeleted)
        self.rows[ROBOTS][event.aggregate_id] = {
            "id": event.aggregate_id,
            "tenant_id": event.tenant_id,
            "name": _clip(event.name, 100),
            "pool": _clip(event.pool, 64),
            "deleted": deleted,
            "created_at": event.created_at,
            "deleted_at": event.ts if deleted else None,
        }
        self._touch(ROBOTS, event.aggregate_id)

    # --- executions -----------------------------------------------------------------------------------------
    def _queued(self, event: ExecutionQueued) -> None:
        executions = self.rows[EXECUTIONS]
        if event.aggregate_id in executions:
            return
        steps = event.steps
        executions[event.aggregate_id] = {
            "id": event.aggregate_id,
            "tenant_id": event.tenant_id,
            "workflow_id": event.workflow_id,
            "workflow_version": event.workflow_version,
            "status": QUEUED,
            "priority": event.priority,
            "attempt": 1,
            "retry_count": 0,
            "crash_count": 0,
            "trigger_type": _clip(event.trigger_type, 30),
            "parent_execution_id": event.parent_execution_id,
            "params": json_value(event.params),
            "steps_total": len(steps),
            "steps_completed": 0,
            "steps_failed": 0,
            "current_step": None,
            "progress": 0,
            "queued_at": event.ts,
            "started_at": None,
            "completed_at": None,
            "duration_ms": None,
            "result": None,
            "error_message": None,
            "dead_lettered": False,
            "in_dlq": False,
            "dead_lettered_at": None,
            "executor": None,
            "updated_at": event.ts,
        }
        self._touch(EXECUTIONS, event.aggregate_id)
        for index, step in enumerate(steps):
            self._new_step(event.aggregate_id, event.tenant_id, index, step.action, step.label)
        usage_key = (event.tenant_id, _month(event.ts))
        usage = self.rows[USAGE].setdefault(
            usage_key, {"tenant_id": usage_key[0], "month": usage_key[1], "executions": 0}
        )
        usage["executions"] += 1
        self._touch(USAGE, usage_key)

    def _new_step(self, execution_id: str, tenant_id: str, index: int, action: str, label: str | None) -> Row:
        row: Row = {
            "execution_id": execution_id,
            "step_index": index,
            "tenant_id": tenant_id,
            "action": _clip(action, 100),
            "label": _clip(label, 200),
            "status": PENDING,
            "attempts": 0,
            "started_at": None,
            "completed_at": None,
            "duration_ms": None,
            "output_data": None,
            "error_message": None,
            "worker_id": None,
            "child_execution_id": None,
        }
        self.rows[STEPS][(execution_id, index)] = row
        self._steps_of.setdefault(execution_id, set()).add(index)
        self._touch(STEPS, (execution_id, index))
        return row

    def _execution(self, event: EventBase) -> None:
        row = self.rows[EXECUTIONS].get(event.aggregate_id)
        if row is None:  # its execution.queued was never seen: nothing to attach this to
            return
        if isinstance(event, ExecutionLog):
            self._log(event, row)
            return
        if not self._lifecycle(event, row):
            self._control(event, row)
        _fold_shared_columns(row, event)  # after: the rules above read the status before the event
        row["updated_at"] = event.ts
        self._touch(EXECUTIONS, event.aggregate_id)

    def _lifecycle(self, event: EventBase, row: Row) -> bool:
        """Status changes driven by the executor; False when ``event`` is not one of them."""
        match event:
            case ExecutionStarted():
                if row["status"] == QUEUED or row["started_at"] is None:  # the first start of a series
                    row["started_at"] = event.ts
                row["attempt"] = event.attempt  # the attempt that ran (the state's is the next one to run)
                row["executor"] = _clip(event.executor, 120)
                row["current_step"] = event.from_step
            case ExecutionProgress():
                self._progress_report(row, event)
            case ExecutionRetrying():
                row["error_message"] = event.error
            case ExecutionCompleted():
                row["completed_at"] = event.ts
                row["duration_ms"] = _completed_duration(event.duration_ms, _since(row["started_at"], event.ts))
                row["result"] = json_value(event.result)
                row["error_message"] = None
                row["progress"] = 100
            case ExecutionFailed():
                row["error_message"] = event.error
                row["completed_at"] = event.ts
                row["duration_ms"] = _since(row["started_at"], event.ts)
            case ExecutionCancelled():
                row["completed_at"] = event.ts
                row["duration_ms"] = _since(row["started_at"], event.ts)
                self._cancel_running_steps(row, event.ts)
            case _:
                return False
        return True

    def _control(self, event: EventBase, row: Row) -> None:
        """Dead letter, DLQ, priority, requeue and crash bookkeeping."""
        match event:
            case ExecutionDeadLettered():
                row["dead_lettered"] = True
                row["in_dlq"] = True
                row["dead_lettered_at"] = event.ts
                if row["status"] not in _FINISHED:  # poison: no execution.failed came before
                    row["status"] = FAILED
                    row["error_message"] = event.error or row["error_message"]
                    row["completed_at"] = event.ts
                    row["duration_ms"] = _since(row["started_at"], event.ts)
            case ExecutionDlqPurged():
                row["in_dlq"] = False
            case ExecutionPriorityChanged():
                pass  # the fold's column (see _execution)
            case ExecutionRequeued():
                row.update(
                    attempt=1,
                    completed_at=None,
                    duration_ms=None,
                    result=None,
                    dead_lettered=False,
                    in_dlq=False,
                    dead_lettered_at=None,
                )
            case ExecutionRecovered():
                row["executor"] = _clip(event.executor, 120)
            case _:
                pass

    def _log(self, event: ExecutionLog, execution: Row) -> None:
        if not event.id:  # a log row is keyed by its event's stream id; an event never written has none
            return
        key = (event.aggregate_id, event.id)
        self.rows[LOGS][key] = {
            "event_id": event.id,
            "execution_id": event.aggregate_id,
            "tenant_id": execution["tenant_id"],
            "step_index": event.step_index,
            "level": _clip(event.level, 10),
            "message": event.message,
            "ts": event.ts,
        }
        self._touch(LOGS, key)

    # --- steps ----------------------------------------------------------------------------------------------
    def _step(self, event: StepEvent) -> None:
        execution = self.rows[EXECUTIONS].get(event.aggregate_id)
        if execution is None:
            return
        key = (event.aggregate_id, event.step_index)
        step = self.rows[STEPS].get(key)
        if step is None:
            if not isinstance(event, StepStarted | StepOffered):  # nothing started it: nothing to attach it to
                return
            step = self._new_step(event.aggregate_id, event.tenant_id, event.step_index, event.action, event.label)
        _fold_step(step, execution, event)
        self._touch(STEPS, key)
        self._recount(execution)
        execution["updated_at"] = event.ts
        self._touch(EXECUTIONS, event.aggregate_id)

    def _recount(self, execution: Row) -> None:
        steps = self.rows[STEPS]
        statuses = [steps[(execution["id"], i)]["status"] for i in self._steps_of.get(execution["id"], ())]
        execution["steps_completed"] = statuses.count(COMPLETED)
        execution["steps_failed"] = statuses.count(FAILED)
        if execution["status"] != COMPLETED:
            execution["progress"] = _share(execution["steps_completed"], 0.0, execution["steps_total"])

    def _progress_report(self, execution: Row, event: ExecutionProgress) -> None:
        """A step's report of its own progress moves the bar within that step's share, while it runs."""
        step = self.rows[STEPS].get((execution["id"], event.step_index))
        if step is None or step["status"] != RUNNING or execution["status"] == COMPLETED:
            return
        percent = max(0.0, min(100.0, float(event.percent)))
        execution["progress"] = _share(execution["steps_completed"], percent, execution["steps_total"])

    def _cancel_running_steps(self, execution: Row, ts: int) -> None:
        """A cancel ends the step that was running: it never finishes, so it is closed as ``cancelled``."""
        steps = self.rows[STEPS]
        for index in self._steps_of.get(execution["id"], ()):
            key = (execution["id"], index)
            step = steps[key]
            if step["status"] in (RUNNING, OFFERED):
                step["status"], step["completed_at"] = CANCELLED, ts
                step["duration_ms"] = _since(step["started_at"], ts)
                self._touch(STEPS, key)
        self._recount(execution)


StepEvent = StepStarted | StepCompleted | StepFailed | StepOffered | StepClaimed | StepWaiting


# The columns that mean what the execution state's fields of the same names mean: set by the one fold,
# shared/execution_state.evolve, rather than restated here.
_SHARED_COLUMNS = ("status", "priority", "retry_count", "crash_count")


def _fold_shared_columns(row: Row, event: EventBase) -> None:
    seen = ExecutionState(p=0, id=row["id"], status=Status(row["status"]), priority=row["priority"],
                          retry_count=row["retry_count"], crash_count=row["crash_count"])
    changes = changes_of(seen, event)
    for column in _SHARED_COLUMNS:
        if column in changes:
            value = changes[column]
            row[column] = value.value if isinstance(value, Status) else value


def _fold_step(step: Row, execution: Row, event: StepEvent) -> None:
    match event:
        case StepStarted():
            step["status"], step["started_at"], step["completed_at"] = RUNNING, event.ts, None
            step["duration_ms"] = step["output_data"] = None  # an earlier attempt's error stays
            step["attempts"] += 1
            step["worker_id"] = step["child_execution_id"] = None
            execution["current_step"] = event.step_index
        case StepOffered():  # waits for a robot; it starts when one claims it
            step["status"], step["started_at"], step["completed_at"] = OFFERED, None, None
            step["duration_ms"] = step["output_data"] = step["worker_id"] = None
            execution["current_step"] = event.step_index
        case StepClaimed():
            step["status"], step["started_at"], step["worker_id"] = RUNNING, event.ts, _clip(event.robot_id, 64)
            step["attempts"] += 1
        case StepWaiting():
            step["child_execution_id"] = event.child_execution_id
        case StepCompleted():
            step["status"], step["completed_at"], step["duration_ms"] = COMPLETED, event.ts, event.duration_ms
            step["output_data"] = json_value(event.output)
            step["worker_id"] = _clip(event.worker_id, 64) if event.worker_id else step["worker_id"]
        case StepFailed():
            step["status"], step["completed_at"], step["duration_ms"] = FAILED, event.ts, event.duration_ms
            step["error_message"] = event.error
            step["worker_id"] = _clip(event.worker_id, 64) if event.worker_id else step["worker_id"]


def _since(start: int | None, end: int) -> int | None:
    return None if start is None else max(0, end - start)


def _completed_duration(reported: int, series: int | None) -> int | None:
    """The executor's figure, unless it is missing (0) or longer than the last series (it counts from the first
    start ever, so a DLQ retry's figure includes the time spent in the DLQ)."""
    if series is None:
        return reported or None
    return series if not reported or reported > series else reported


def _share(completed: int, running_percent: float, total: int) -> int:
    """Percent of ``total`` steps done: whole completed steps plus ``running_percent`` of the running one."""
    if total <= 0:
        return 0
    return max(0, min(100, int((100 * completed + running_percent) // total)))


def _sort_key(key: Key) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)
