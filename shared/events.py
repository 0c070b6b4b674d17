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

from shared.workflows import WorkflowDef


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


# --- workflows -----------------------------------------------------------------------------------------------


class WorkflowSaved(EventBase, tag="workflow.saved", kw_only=True, frozen=True):
    version: int
    definition: WorkflowDef


class WorkflowDeleted(EventBase, tag="workflow.deleted", kw_only=True, frozen=True):
    pass


# --- executions ----------------------------------------------------------------------------------------------


class ExecutionQueued(EventBase, tag="execution.queued", kw_only=True, frozen=True):
    workflow_id: str
    workflow_version: int
    definition: WorkflowDef
    params: dict[str, Any] = {}
    priority: int
    trigger_type: str = "api"
    parent_execution_id: str | None = None


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


class StepFailed(EventBase, tag="step.failed", kw_only=True, frozen=True):
    step_index: int
    error: str
    duration_ms: int = 0
    attempt: int = 1
    continued: bool = False


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


class ExecutionCompleted(EventBase, tag="execution.completed", kw_only=True, frozen=True):
    result: Any = None
    duration_ms: int = 0


class ExecutionFailed(EventBase, tag="execution.failed", kw_only=True, frozen=True):
    error: str
    attempt: int = 1
    dead_lettered: bool = False


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


Event = (
    TenantCreated
    | TenantPlanChanged
    | WorkflowSaved
    | WorkflowDeleted
    | ExecutionQueued
    | ExecutionStarted
    | StepStarted
    | StepCompleted
    | StepFailed
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
)

EVENT_TYPES: dict[str, type[EventBase]] = {
    str(cls.__struct_config__.tag): cls
    for cls in EventBase.__subclasses__()
}

# (type tag, version) -> function rewriting an old body (as a dict) to the next version.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
CURRENT_VERSION: dict[str, int] = {}

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


def entry_fields(event: EventBase) -> tuple[str, bytes]:
    """(type, body) as written to a stream entry."""
    return type_of(event), encode(event)
