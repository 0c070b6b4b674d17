"""Every event Orquesta writes: one msgspec tagged union, msgpack-encoded in a stream entry.

A stream entry holds two fields: ``t`` (the type, for humans using ``redis-cli``) and ``d`` (the msgpack
body). The event's ``id`` is its stream id, filled in on read. Rules for evolving an event: new fields get
defaults; never rename or retype a field; a breaking change bumps ``v`` and registers an upcaster in
``UPCASTERS`` that rewrites the old body on read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from shared.log.workflows import WorkflowDef


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    tenant_id: str
    aggregate_id: str
    ts: int
    v: int = 1
    id: str = ""


# --- tenants -------------------------------------------------------------------------------------------------


class TenantCreated(EventBase, tag="tenant.created", kw_only=True, frozen=True):
    name: str
    plan: str
    api_key_id: str
    api_key_hash: str
    api_key_prefix: str


class TenantPlanChanged(EventBase, tag="tenant.plan_changed", kw_only=True, frozen=True):
    plan: str


class TenantPaused(EventBase, tag="tenant.paused", kw_only=True, frozen=True):
    """Its queued work waits (nothing is dropped) until ``tenant.resumed``."""


class TenantResumed(EventBase, tag="tenant.resumed", kw_only=True, frozen=True):
    pass


# --- workflows -----------------------------------------------------------------------------------------------


class WorkflowSaved(EventBase, tag="workflow.saved", kw_only=True, frozen=True):
    version: int
    definition: WorkflowDef


class WorkflowDeleted(EventBase, tag="workflow.deleted", kw_only=True, frozen=True):
    pass


class WorkflowPaused(EventBase, tag="workflow.paused", kw_only=True, frozen=True):
    """Its queued executions are set aside (not dropped) until ``workflow.resumed``."""


class WorkflowResumed(EventBase, tag="workflow.resumed", kw_only=True, frozen=True):
    pass


# --- executions ----------------------------------------------------------------------------------------------


class StepOutline(msgspec.Struct, frozen=True, kw_only=True):
    """What a queued execution's projection needs of a step: not its params, which can be large."""

    action: str
    label: str | None = None


class ExecutionQueued(EventBase, tag="execution.queued", kw_only=True, frozen=True):
    """Pins ``workflow_version``: that version's definition is in its ``workflow.saved`` event (and in Redis
    at ``orq:{p}:wfdef:<workflow>:<version>``), written once per version rather than once per execution, so
    a bulk of runs of a large workflow does not copy it into every event. v1 embedded the whole definition;
    the upcaster keeps its steps' outline."""

    v: int = 2
    workflow_id: str
    workflow_version: int
    steps: list[StepOutline]
    params: dict[str, Any] = {}
    priority: int
    trigger_type: str = "api"
    parent_execution_id: str | None = None
    parent_step: int | None = None  # a child's step in its parent, and how deep it nests
    depth: int = 0
    max_attempts: int | None = None  # the run's own attempts, overriding its workflow's policy (a queue item's run)


class ExecutionStarted(EventBase, tag="execution.started", kw_only=True, frozen=True):
    attempt: int
    executor: str
    from_step: int = 0


class StepStarted(EventBase, tag="step.started", kw_only=True, frozen=True):
    step_index: int
    action: str
    label: str | None = None
    attempt: int = 1


class StepCompleted(EventBase, tag="step.completed", kw_only=True, frozen=True):
    step_index: int
    output: Any = None
    duration_ms: int = 0
    worker_id: str | None = None  # the robot that ran it (a step run by an executor names none)


class StepFailed(EventBase, tag="step.failed", kw_only=True, frozen=True):
    step_index: int
    error: str
    duration_ms: int = 0
    attempt: int = 1
    continued: bool = False
    worker_id: str | None = None  # the robot that ran it (a step run by an executor names none)


class StepOffered(EventBase, tag="step.offered", kw_only=True, frozen=True):
    """A ``runs_on`` step waits for a robot of ``pool`` (the execution is parked, holding no executor slot).
    ``task_id`` names this offer: a task offered again (its robot went silent) gets a new one."""

    step_index: int
    action: str
    label: str | None = None
    pool: str
    task_id: str
    attempt: int = 1


class StepClaimed(EventBase, tag="step.claimed", kw_only=True, frozen=True):
    """A robot took an offered step: it runs from now, under a lease the robot renews by heartbeats."""

    step_index: int
    task_id: str
    robot_id: str
    attempt: int = 1


class StepWaiting(EventBase, tag="step.waiting", kw_only=True, frozen=True):
    """A ``workflow`` step with ``wait`` started child ``child_execution_id``; the parent is parked (no slot)
    until the child ends."""

    step_index: int
    child_execution_id: str


class ExecutionProgress(EventBase, tag="execution.progress", kw_only=True, frozen=True):
    step_index: int
    percent: float
    message: str | None = None


class ExecutionLog(EventBase, tag="execution.log", kw_only=True, frozen=True):
    step_index: int
    message: str
    level: str = "info"


class ExecutionRetrying(EventBase, tag="execution.retrying", kw_only=True, frozen=True):
    failed_attempt: int
    next_attempt: int
    delay_ms: int
    error: str
    resume_step: int | None = None  # where the next attempt starts (None in events written before it was recorded)


class ExecutionCompleted(EventBase, tag="execution.completed", kw_only=True, frozen=True):
    result: Any = None
    duration_ms: int = 0


class ExecutionFailed(EventBase, tag="execution.failed", kw_only=True, frozen=True):
    error: str
    attempt: int = 1
    dead_lettered: bool = False
    resume_step: int | None = None  # where a retry of it starts (None in events written before it was recorded)


class ExecutionDeadLettered(EventBase, tag="execution.dead_lettered", kw_only=True, frozen=True):
    reason: Literal["exhausted", "poison"] = "exhausted"
    error: str = ""


class ExecutionCancelled(EventBase, tag="execution.cancelled", kw_only=True, frozen=True):
    reason: str = "requested"


class ExecutionPriorityChanged(EventBase, tag="execution.priority_changed", kw_only=True, frozen=True):
    priority: int
    previous: int


class ExecutionRequeued(EventBase, tag="execution.requeued", kw_only=True, frozen=True):
    """A finished execution queued again for a new series of attempts (API retry or DLQ retry)."""

    reason: Literal["retry", "dlq_retry"]
    priority: int


class ExecutionRecovered(EventBase, tag="execution.recovered", kw_only=True, frozen=True):
    """An executor died holding this execution; another one took it over."""

    crash_count: int
    lost_executor: str
    executor: str


class ExecutionDlqPurged(EventBase, tag="execution.dlq_purged", kw_only=True, frozen=True):
    pass


class QuotaExceeded(EventBase, tag="quota.exceeded", kw_only=True, frozen=True):
    limit: int
    used: int
    requested: int
    month: str


# --- notifications (services/notifier) --------------------------------------------------------------------
# Every notification event carries the whole identity of its notification (execution, trigger, channel,
# target), so its projection row is a function of the event alone: no row has to be read to fold one.
NotifyOn = Literal["completed", "failed", "dead_lettered"]
NotifyChannel = Literal["webhook", "email"]


class NotificationQueued(EventBase, tag="notification.queued", kw_only=True, frozen=True):
    """An execution ended in a way a workflow's ``notify`` entry asked to hear about; delivery follows."""

    execution_id: str
    workflow_id: str
    trigger: NotifyOn
    channel: NotifyChannel
    target: str
    created_at: int


class NotificationSent(EventBase, tag="notification.sent", kw_only=True, frozen=True):
    """One delivery attempt succeeded (a 2xx reply, or the SMTP server accepted the mail)."""

    execution_id: str
    workflow_id: str
    trigger: NotifyOn
    channel: NotifyChannel
    target: str
    created_at: int
    attempt: int
    status_code: int | None = None
    duration_ms: int = 0


class NotificationFailed(EventBase, tag="notification.failed", kw_only=True, frozen=True):
    """One delivery attempt failed; ``final`` when no attempt follows (else one comes after ``retry_in_ms``)."""

    execution_id: str
    workflow_id: str
    trigger: NotifyOn
    channel: NotifyChannel
    target: str
    created_at: int
    attempt: int
    error: str
    status_code: int | None = None
    duration_ms: int = 0
    final: bool = False
    retry_in_ms: int | None = None
    delivered_at: int | None = None


class NotificationResendRequested(EventBase, tag="notification.resend_requested", kw_only=True, frozen=True):
    """Someone asked (``POST /api/notifications/{id}/resend``) for a new series of delivery attempts."""

    execution_id: str
    workflow_id: str
    trigger: NotifyOn
    channel: NotifyChannel
    target: str
    created_at: int
    attempts: int = 0
    delivered_at: int | None = None


# --- triggers (services/trigger, services/api/routes/triggers.py) ------------------------------------------
# Every trigger event carries the trigger's whole state after it (``trigger``), so its projection row is a
# function of the latest event alone: no row has to be read to fold one.
TriggerSkipReason = Literal["quota", "backlog_full", "overlap", "missed", "workflow_deleted", "max_concurrent"]


class TriggerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger as of one ``revision`` (which grows by one with every save and every firing)."""

    workflow_id: str
    trigger_type: str
    config: dict[str, Any]
    enabled: bool
    revision: int
    trigger_count: int = 0
    last_triggered_at: int | None = None
    created_at: int


class TriggerSaved(EventBase, tag="trigger.saved", kw_only=True, frozen=True):
    """A trigger was created or replaced (``PUT``), enabled or disabled."""

    trigger: TriggerSnapshot


class TriggerDeleted(EventBase, tag="trigger.deleted", kw_only=True, frozen=True):
    trigger: TriggerSnapshot


class TriggerFired(EventBase, tag="trigger.fired", kw_only=True, frozen=True):
    """The trigger requested ``execution_id`` (admitted in the same atomic unit); ``source`` says what fired it."""

    trigger: TriggerSnapshot
    execution_id: str
    source: dict[str, Any] = {}


class TriggerSkipped(EventBase, tag="trigger.skipped", kw_only=True, frozen=True):
    """A firing was due but no execution was requested (``reason``); ``ticks`` counts skipped schedule ticks."""

    workflow_id: str
    trigger_type: str
    reason: TriggerSkipReason
    ticks: int = 1
    source: dict[str, Any] = {}


# --- work queues (shared/queues*.py, services/api/routes/queue*.py) ------------------------------------------
# Every queue and item event carries its aggregate's whole state after it (``queue`` / ``item``), so its
# projection row is a function of the latest event alone; ``queue_item.added`` also carries the item's data.
QueueItemStatus = Literal["new", "in_progress", "completed", "failed", "abandoned", "retried"]


class QueueSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A work queue's settings as of one event."""

    name: str
    description: str | None = None
    max_retries: int = 3
    sla_minutes: int = 60
    abandon_after_minutes: int = 1440
    unique_reference: bool = False
    created_at: int
    updated_at: int


class QueueItemError(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    kind: Literal["business", "application"] = "application"


class QueueItemSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A queue item as of one event (its ``data`` only travels in ``queue_item.added``).

    Optional fields default to None: the claim op of ``commit.lua`` rewrites this msgpack map and drops nils.
    """

    queue_id: str
    status: QueueItemStatus
    priority: int
    reference: str | None = None
    deadline: int | None = None
    defer_until: int | None = None
    retry_count: int = 0
    retry_of: str | None = None
    retry_id: str | None = None
    origin_at: int
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    processing_ms: int | None = None
    processed_by: str | None = None
    execution_id: str | None = None
    progress: str | None = None
    error: QueueItemError | None = None


class QueueCreated(EventBase, tag="queue.created", kw_only=True, frozen=True):
    queue: QueueSnapshot


class QueueUpdated(EventBase, tag="queue.updated", kw_only=True, frozen=True):
    queue: QueueSnapshot


class QueueDeleted(EventBase, tag="queue.deleted", kw_only=True, frozen=True):
    queue: QueueSnapshot


class QueueItemAdded(EventBase, tag="queue_item.added", kw_only=True, frozen=True):
    """A new item (``item.retry_of`` set when it retries another one)."""

    item: QueueItemSnapshot
    data: dict[str, Any] = {}


class QueueItemStarted(EventBase, tag="queue_item.started", kw_only=True, frozen=True):
    """Claimed by a robot (``item.processed_by``) or by the ``queue_item`` trigger for an execution."""

    item: QueueItemSnapshot


class QueueItemProgressed(EventBase, tag="queue_item.progress", kw_only=True, frozen=True):
    item: QueueItemSnapshot


class QueueItemCompleted(EventBase, tag="queue_item.completed", kw_only=True, frozen=True):
    item: QueueItemSnapshot
    result: Any = None


class QueueItemFailed(EventBase, tag="queue_item.failed", kw_only=True, frozen=True):
    """``item.error.kind``: a business failure is final; an application one is retried while retries are left."""

    item: QueueItemSnapshot


class QueueItemAbandoned(EventBase, tag="queue_item.abandoned", kw_only=True, frozen=True):
    """In progress longer than its queue's ``abandon_after_minutes``."""

    item: QueueItemSnapshot


class QueueItemRetried(EventBase, tag="queue_item.retried", kw_only=True, frozen=True):
    """A new item (``item.retry_id``) retries this one, after an application failure or an abandonment."""

    item: QueueItemSnapshot
    reason: Literal["failed", "abandoned"] = "failed"


# --- robots (shared/domain/robots/registry.py) ------------------------------------------------------------------------


class RobotRegistered(EventBase, tag="robot.registered", kw_only=True, frozen=True):
    """A robot of the tenant (``aggregate_id``) joined ``pool``. Carries the first characters of its key, to
    recognise it by, never the key or its hash: events reach the tenant's feed and the archive."""

    name: str
    pool: str
    key_prefix: str
    created_at: int


class RobotDeleted(EventBase, tag="robot.deleted", kw_only=True, frozen=True):
    """The robot is gone and its key revoked. Repeats what the row needs, so the projection reads nothing."""

    name: str = ""
    pool: str = ""
    created_at: int = 0


Event = (
    TenantCreated
    | TenantPlanChanged
    | TenantPaused
    | TenantResumed
    | WorkflowPaused
    | WorkflowResumed
    | WorkflowSaved
    | WorkflowDeleted
    | ExecutionQueued
    | ExecutionStarted
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepOffered
    | StepClaimed
    | StepWaiting
    | ExecutionProgress
    | ExecutionLog
    | ExecutionRetrying
    | ExecutionCompleted
    | ExecutionFailed
    | ExecutionDeadLettered
    | ExecutionCancelled
    | ExecutionPriorityChanged
    | ExecutionRequeued
    | ExecutionRecovered
    | ExecutionDlqPurged
    | QuotaExceeded
    | NotificationQueued
    | NotificationSent
    | NotificationFailed
    | NotificationResendRequested
    | TriggerSaved
    | TriggerDeleted
    | TriggerFired
    | TriggerSkipped
    | QueueCreated
    | QueueUpdated
    | QueueDeleted
    | QueueItemAdded
    | QueueItemStarted
    | QueueItemProgressed
    | QueueItemCompleted
    | QueueItemFailed
    | QueueItemAbandoned
    | QueueItemRetried
    | RobotRegistered
    | RobotDeleted
)

EVENT_TYPES: dict[str, type[EventBase]] = {
    str(cls.__struct_config__.tag): cls
    for cls in EventBase.__subclasses__()
}

# (type tag, version) -> function rewriting an old body (as a dict) to the next version.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
def _queued_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    definition = raw.pop("definition", None) or {}
    outline = [{"action": s.get("action", ""), "label": s.get("label")} for s in definition.get("steps", [])]
    return {**raw, "v": 2, "steps": outline}


def outline(definition: WorkflowDef) -> list[StepOutline]:
    return [StepOutline(action=step.action, label=step.label) for step in definition.steps]


UPCASTERS: dict[tuple[str, int], Upcaster] = {("execution.queued", 1): _queued_v1_to_v2}
CURRENT_VERSION: dict[str, int] = {"execution.queued": 2}

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)
_raw_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_json_encoder = msgspec.json.Encoder()

_BASE_FIELDS = frozenset(EventBase.__struct_fields__)


def encode(event: EventBase) -> bytes:
    return _encoder.encode(event)


def decode(body: bytes, stream_id: str = "") -> Event:
    """Decode an entry body, upcasting old versions, and stamp it with its stream id."""
    try:
        event = _decoder.decode(body)
    except msgspec.ValidationError:
        event = _upcast(body)
    else:
        if event.v < CURRENT_VERSION.get(type_of(event), 1):
            event = _upcast(body)
    return msgspec.structs.replace(event, id=stream_id) if stream_id else event


def _upcast(body: bytes) -> Event:
    raw = _raw_decoder.decode(body)
    type_tag = raw.get("type", "")
    while (step := UPCASTERS.get((type_tag, raw.get("v", 1)))) is not None:
        raw = step(raw)
    event: Event = msgspec.convert(raw, Event)
    return event


def type_of(event: EventBase) -> str:
    return str(event.__struct_config__.tag)


def data_of(event: EventBase) -> dict[str, Any]:
    """The payload: every field but the common ones."""
    return {f: getattr(event, f) for f in event.__struct_fields__ if f not in _BASE_FIELDS}


def to_wire(event: EventBase) -> dict[str, Any]:
    """The JSON shape served to API and WebSocket clients."""
    return {
        "id": event.id,
        "type": type_of(event),
        "tenant_id": event.tenant_id,
        "aggregate_id": event.aggregate_id,
        "ts": event.ts,
        "v": event.v,
        "data": msgspec.to_builtins(data_of(event)),
    }


def to_json(event: EventBase) -> bytes:
    return _json_encoder.encode(to_wire(event))
