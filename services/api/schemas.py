"""Request and response bodies of the HTTP API, as msgspec Structs.

Requests are decoded straight into these types (unknown fields refused, bounds checked by ``Meta``); responses
are encoded from them. ``openapi.py`` derives the published JSON Schemas from the same classes, so the
document and the wire format cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.log.workflows import MAX_ATTEMPTS, MAX_DELAY_MS, MAX_NOTIFY, MAX_STEPS, NotifyDef, RetryPolicy, StepDef

MAX_BULK_RUNS = 1000
MAX_STEP_TIMEOUT_S = 7 * 24 * 3600.0

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Priority = Annotated[int, Meta(ge=1, le=10, description="1 is the highest priority; plans set a floor.")]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Cursor = Annotated[str | None, Meta(description="Pass as `cursor` to get the next page; null on the last page.")]


class _In(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are an error, not silently dropped."""


class _Out(msgspec.Struct, kw_only=True):
    """Base of response bodies."""


# --- requests --------------------------------------------------------------------------------------------------


class TenantCreate(_In):
    name: Name
    plan: str


class TenantUpdate(_In):
    plan: str | None = None
    paused: bool | None = None


class BackoffIn(_In):
    type: Literal["exponential", "fixed"] = "exponential"
    delay_ms: Annotated[int, Meta(ge=0, le=MAX_DELAY_MS)] = 5000


class RetryIn(_In):
    attempts: Annotated[int, Meta(ge=1, le=MAX_ATTEMPTS)] = 3
    backoff: BackoffIn = msgspec.field(default_factory=BackoffIn)


class StepIn(_In):
    action: Annotated[str, Meta(min_length=1, max_length=100)]
    label: Annotated[str, Meta(max_length=200)] | None = None
    params: dict[str, Any] = {}
    timeout_s: Annotated[float, Meta(gt=0, le=MAX_STEP_TIMEOUT_S)] | None = None
    on_error: Literal["fail", "continue"] = "fail"
    runs_on: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "a robot pool: the step is offered to the tenant's robots of that pool (docs/robots.md)"))] | None = None


NotifyOn = Literal["completed", "failed", "dead_lettered"]


class NotifyIn(_In):
    """Who to tell when a run ends: exactly one of ``webhook`` (POSTed, signed with ``secret``) or ``email``."""

    on: Annotated[list[NotifyOn], Meta(min_length=1, max_length=3)]
    webhook: Annotated[str, Meta(min_length=1, max_length=2000, description="http(s) URL")] | None = None
    secret: Annotated[str, Meta(min_length=8, max_length=200, description="HMAC-SHA256 key")] | None = None
    email: Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None


class WorkflowIn(_In):
    name: Name
    steps: Annotated[list[StepIn], Meta(min_length=1, max_length=MAX_STEPS)]
    retry: RetryIn | None = None
    retry_from: Literal["failed_step", "start"] = "failed_step"
    description: Annotated[str, Meta(max_length=5000)] | None = None
    notify: Annotated[list[NotifyIn], Meta(max_length=MAX_NOTIFY)] = []


class RunIn(_In):
    params: dict[str, Any] = {}
    priority: Priority | None = None


class ExecuteIn(RunIn):
    trigger_type: Annotated[
        Literal["api", "manual"], Meta(description="`manual`: started by a person (a button); `api`: by a program")
    ] = "api"


class BulkExecuteIn(_In):
    runs: Annotated[list[RunIn], Meta(min_length=1, max_length=MAX_BULK_RUNS)]
    trigger_type: Literal["api", "manual"] = "api"


class PriorityIn(_In):
    priority: Priority


# --- responses -------------------------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    """Every error: a stable ``code``, a human ``message``, and details that depend on the code."""

    code: str
    message: str
    field: str | None = None


class Error(_Out):
    error: ErrorDetail


class Tenant(_Out):
    id: str
    name: str
    plan: str
    api_key: Annotated[str, Meta(description="Shown once; only its hash is kept.")]


class TenantAdmin(_Out):
    id: str
    name: str
    plan: str
    paused: bool


class WorkflowPause(_Out):
    id: str
    paused: bool


class PlanLimits(_Out):
    monthly_quota: Annotated[int, Meta(description="0 means unlimited")]
    rate_per_minute: int
    max_concurrent: int
    default_priority: int
    min_priority: int
    max_backlog: Annotated[int, Meta(description="0 means unlimited")]


class Usage(_Out):
    month: Annotated[str, Meta(description="YYYYMM, UTC")]
    executions: int
    quota: int | None
    remaining: int | None


class TenantProfile(_Out):
    id: str
    name: str
    plan: str
    paused: bool
    limits: PlanLimits
    usage: Usage
    queued: Annotated[int, Meta(description="executions waiting to be dispatched")]
    running: Annotated[int, Meta(description="executions running now")]


class Workflow(_Out):
    id: str
    name: str
    version: int
    steps: list[StepDef]
    retry: RetryPolicy
    retry_from: Literal["failed_step", "start"]
    description: str | None
    notify: list[NotifyDef]
    created_at: Timestamp | None
    updated_at: Timestamp | None


class WorkflowPage(_Out):
    items: list[Workflow]
    next_cursor: Cursor


class Queued(_Out):
    execution_id: str
    status: Literal["queued"]
    priority: int


class BulkQueued(_Out):
    execution_ids: list[str]


class CommandAccepted(_Out):
    execution_id: str
    status: str
    priority: int


ExecutionStatus = Literal["queued", "running", "retrying", "completed", "failed", "cancelled"]


class ExecutionStep(_Out):
    step_index: int
    action: str
    label: str | None
    status: str
    started_at: Timestamp | None
    completed_at: Timestamp | None
    duration_ms: int | None
    output_data: Any
    error_message: Annotated[str | None, Meta(description=(
        "the error of the step's last failed attempt: kept when a later attempt completes it, "
        "so an execution that succeeded on a retry still shows what failed before"))]
    worker_id: Annotated[str | None, Meta(description="the robot that runs or ran this `runs_on` step")] = None
    child_execution_id: Annotated[str | None, Meta(description="the child execution of a `workflow` step")] = None


class ExecutionSummary(_Out):
    id: str
    workflow_id: str
    status: ExecutionStatus
    priority: int
    retry_count: int
    trigger_type: str
    steps_total: int
    steps_completed: int
    steps_failed: int
    queued_at: Timestamp | None
    started_at: Annotated[Timestamp | None, Meta(description=(
        "the first start of the last attempt series (a DLQ retry or a retry of a finished run starts a new one)"))]
    completed_at: Timestamp | None
    duration_ms: Annotated[int | None, Meta(description=(
        "running time of the last attempt series, from `started_at` to its end: time spent in the DLQ or queued "
        "for a retry of it is not counted"))]
    result: Any
    error_message: Annotated[str | None, Meta(description=(
        "the outcome's error: set while retrying and when failed, null once completed (earlier attempts' errors "
        "stay on their steps)"))]
    dead_lettered: bool
    crash_count: int
    attempt: int
    progress: Annotated[int, Meta(description=(
        "percent of the steps completed (a failed step counts nothing), plus the running step's share of its "
        "own progress report; 100 once completed"))]


class Execution(ExecutionSummary):
    steps: list[ExecutionStep]


class ExecutionPage(_Out):
    items: list[ExecutionSummary]
    next_cursor: Cursor


class FeedEvent(_Out):
    """One event as the WebSocket feed sends it (``GET /api/executions/{id}/events``)."""

    id: Annotated[str, Meta(description="the event's stream id")]
    type: str
    tenant_id: str
    aggregate_id: str
    ts: Annotated[int, Meta(description="ms since the epoch")]
    v: int
    data: dict[str, Any]


class EventPage(_Out):
    items: list[FeedEvent]
    next_cursor: Cursor


class LogLine(_Out):
    """One ``execution.log`` line (``GET /api/executions/{id}/logs``)."""

    event_id: Annotated[str, Meta(description="the log event's stream id")]
    ts: Annotated[int, Meta(description="ms since the epoch")]
    step_index: int
    level: str
    message: str


class LogPage(_Out):
    items: list[LogLine]
    next_cursor: Cursor


class DlqEntry(ExecutionSummary):
    dead_lettered_at: Timestamp | None


class DlqPage(_Out):
    items: list[DlqEntry]
    next_cursor: Cursor


class StatusCounts(_Out):
    queued: int
    running: int
    retrying: int
    completed: int
    failed: int
    cancelled: int
    dead_lettered: Annotated[int, Meta(description="executions in the dead-letter queue now")]


class MinuteThroughput(_Out):
    minute: Annotated[Timestamp, Meta(description="start of the minute (UTC)")]
    completed: int
    failed: int


class Stats(_Out):
    """The tenant's execution statistics, from the SQL projection; windowed figures over ``window_minutes``."""

    counts: StatusCounts
    depth_by_priority: Annotated[dict[str, int], Meta(description="queued executions per priority level 1..10")]
    throughput_per_minute: Annotated[float, Meta(description="executions finished (completed or failed) per minute")]
    throughput: Annotated[list[MinuteThroughput], Meta(description="per minute, oldest first, current minute last")]
    avg_duration_ms: Annotated[float | None, Meta(description="of completed executions; null when none")]
    p95_duration_ms: float | None
    error_rate: Annotated[float | None, Meta(description="failed / (completed + failed); null when none finished")]
    window_minutes: int
    generated_at: Timestamp
    as_of: Annotated[
        str | None,
        Meta(description="log position (stream id) the figures include; open /ws/events with since=as_of to "
             "apply every later event once"),
    ]


class Health(_Out):
    status: Literal["ok"]


class Check(_Out):
    ok: bool
    error: str | None = None


class Readiness(_Out):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Check]


# --- triggers --------------------------------------------------------------------------------------------------

TriggerTypeName = Literal["schedule", "webhook", "email", "file_watcher", "queue_item", "workflow_completed", "api",
                          "manual"]


class TriggerIn(_In):
    """A trigger: which workflow it starts, when (``trigger_type`` and its ``config``), and whether it is on."""

    workflow_id: Annotated[str, Meta(min_length=1, max_length=64)]
    trigger_type: TriggerTypeName
    config: Annotated[dict[str, Any], Meta(description="Per type, see docs/triggers.md")] = {}
    enabled: bool = True


class Trigger(_Out):
    id: str
    workflow_id: str
    trigger_type: TriggerTypeName
    config: dict[str, Any]
    enabled: bool
    trigger_count: int
    last_triggered_at: Timestamp | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    webhook_url: Annotated[str | None, Meta(description="webhook triggers: where to POST")] = None
    email_address: Annotated[str | None, Meta(description="email triggers: where to send mail")] = None
    next_fire_times: Annotated[
        list[str] | None,
        Meta(description="schedule triggers: the next five ticks, ISO 8601 in the trigger's time zone"),
    ] = None


class TriggerPage(_Out):
    items: list[Trigger]
    next_cursor: Cursor


class WebhookAccepted(_Out):
    execution_id: str


# --- notifications ---------------------------------------------------------------------------------------------

NotificationStatus = Literal["pending", "retrying", "sent", "failed"]


class Notification(_Out):
    id: str
    execution_id: str
    workflow_id: str
    trigger: NotifyOn
    channel: Literal["webhook", "email"]
    target: Annotated[str, Meta(description="the webhook URL or the email address")]
    status: NotificationStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    delivered_at: Timestamp | None


class NotificationPage(_Out):
    items: list[Notification]
    next_cursor: Cursor


class ResendAccepted(_Out):
    id: str
    status: Literal["pending"]


# --- work queues ---------------------------------------------------------------------------------------------------

MAX_QUEUE_BULK = 10_000
QueueItemStatus = Literal["new", "in_progress", "completed", "failed", "abandoned", "retried"]
QueueDescription = Annotated[str, Meta(max_length=5000)]
Retries = Annotated[int, Meta(ge=0, le=100, description="retries of an item after an application failure")]
Minutes = Annotated[int, Meta(ge=1, le=525_600, description="minutes (up to a year)")]
Reference = Annotated[str, Meta(min_length=1, max_length=200)]
ZonedTime = Annotated[datetime, Meta(tz=True, description="RFC 3339, with a time zone")]


class QueueIn(_In):
    name: Name
    description: QueueDescription | None = None
    max_retries: Retries = 3
    sla_minutes: Minutes = 60
    abandon_after_minutes: Annotated[int, Meta(ge=1, le=525_600, description="in progress longer: abandoned")] = 1440
    unique_reference: Annotated[bool, Meta(description="refuse an item whose reference the queue has seen")] = False


class QueueUpdateIn(_In):
    """Only the fields given change (``description: null`` clears it)."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: QueueDescription | None | msgspec.UnsetType = msgspec.UNSET
    max_retries: Retries | msgspec.UnsetType = msgspec.UNSET
    sla_minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    abandon_after_minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    unique_reference: bool | msgspec.UnsetType = msgspec.UNSET


class QueueItemIn(_In):
    data: Annotated[dict[str, Any], Meta(description="the transaction's data (a JSON object)")]
    priority: Annotated[int, Meta(ge=1, le=10, description="1 is claimed first")] = 5
    reference: Reference | None = None
    deadline: ZonedTime | None = None
    defer_until: ZonedTime | None = None


class QueueItemsBulkIn(_In):
    items: Annotated[list[QueueItemIn], Meta(min_length=1, max_length=MAX_QUEUE_BULK)]


class ClaimIn(_In):
    robot: Annotated[str, Meta(min_length=1, max_length=200, description="recorded as processed_by")] | None = None


class QueueItemErrorIn(_In):
    message: Annotated[str, Meta(max_length=10_000)] = ""
    kind: Literal["business", "application"] = "application"


class QueueItemUpdateIn(_In):
    """``completed`` or ``failed`` end the item; ``in_progress`` records a progress note."""

    status: Literal["completed", "failed", "in_progress"]
    result: Any = None
    error: QueueItemErrorIn | None = None
    progress: Annotated[str, Meta(max_length=2000)] | None = None


class Queue(_Out):
    id: str
    name: str
    description: str | None
    max_retries: int
    sla_minutes: int
    abandon_after_minutes: int
    unique_reference: bool
    created_at: Timestamp | None
    updated_at: Timestamp | None


class QueuePage(_Out):
    items: list[Queue]
    next_cursor: Cursor


class QueueItemError(_Out):
    message: str
    kind: Literal["business", "application"]


class QueueItem(_Out):
    id: str
    queue_id: str
    status: QueueItemStatus
    priority: int
    reference: str | None
    data: dict[str, Any]
    deadline: Timestamp | None
    defer_until: Timestamp | None
    retry_count: int
    retry_of: Annotated[str | None, Meta(description="the item this one retries")]
    retry_id: Annotated[str | None, Meta(description="the item that retries this one")]
    processed_by: str | None
    execution_id: str | None
    progress: str | None
    result: Any
    error: QueueItemError | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    processing_ms: int | None


class QueueItemChange(_Out):
    event: str
    status: QueueItemStatus
    at: Timestamp | None
    processed_by: str | None
    detail: str | None
    execution_id: Annotated[str | None, Meta(description="the execution processing the item as of this change")]


class QueueItemDetail(QueueItem):
    history: list[QueueItemChange]
    executions: Annotated[list[str], Meta(description="the executions that processed the item, first one first")]


class QueueItemPage(_Out):
    items: list[QueueItem]
    next_cursor: Cursor


class QueueItemsAdded(_Out):
    count: int
    ids: list[str]


class QueueItemAtRisk(_Out):
    id: str
    reference: str | None
    status: QueueItemStatus
    sla_due_at: Timestamp | None
    deadline: Timestamp | None


class QueueStats(_Out):
    new: int
    in_progress: int
    completed: int
    failed: int
    abandoned: int
    retried: int
    avg_processing_ms: Annotated[float, Meta(description="mean start-to-completion time of completed items")]
    sla_breaches: int
    at_risk: int
    at_risk_items: list[QueueItemAtRisk]


# --- robots (services/api/routes/robots.py) ------------------------------------------------------------------------

RobotName = Annotated[str, Meta(min_length=1, max_length=100)]
Pool = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="1..64 of A-Z a-z 0-9 _ . -")]
RobotStatus = Literal["idle", "busy", "offline"]


class RobotIn(_In):
    name: Annotated[RobotName, Meta(description="unique per tenant, regardless of case")]
    pool: Pool


class RobotRegistered(_Out):
    id: str
    name: str
    pool: str
    robot_key: Annotated[str, Meta(description="Shown once; only its hash is kept. The robot sends it as its bearer.")]


class Robot(_Out):
    id: str
    name: str
    pool: str
    status: Annotated[RobotStatus, Meta(description=(
        "offline: no call within ORQ_ROBOT_OFFLINE_S (or never); busy: it holds a task; else idle"))]
    last_seen_at: Annotated[Timestamp | None, Meta(description="its last authenticated call")]
    current_task: Annotated[str | None, Meta(description="the task id it holds now")]
    created_at: Timestamp | None


class RobotPage(_Out):
    items: list[Robot]
    next_cursor: Cursor


class RobotSelf(_Out):
    """What a robot learns about itself (``GET /api/robots/me``, with its robot key)."""

    id: str
    name: str
    pool: str
    tenant_id: str


# --- robot tasks (services/api/routes/robot_tasks.py, DESIGN §10) -------------------------------------------

MAX_TASK_WAIT_S = 30
MAX_LOG_LINES = 100


class TaskNextIn(_In):
    wait_s: Annotated[float, Meta(ge=0, le=MAX_TASK_WAIT_S, description=(
        "long poll: wait up to this long for a task (answered at once when one is offered meanwhile)"))] = 0


class Task(_Out):
    """A step for the robot to run: its rendered params, and the lease it must renew by heartbeats."""

    task_id: str
    execution_id: str
    step_index: int
    action: str
    label: str | None
    params: Any
    attempt: int
    lease_s: float


class HeartbeatIn(_In):
    progress: Annotated[float, Meta(ge=0, le=100, description="percent of the step done")] | None = None
    message: Annotated[str, Meta(max_length=2000)] | None = None


class Lease(_Out):
    lease_s: float


class TaskCompleteIn(_In):
    output: Any = None


class TaskFailIn(_In):
    message: Annotated[str, Meta(min_length=1, max_length=2000)]
    kind: Annotated[Literal["business", "application"], Meta(description=(
        "recorded with the error; either way the workflow's retry policy and DLQ decide what follows"))] = "application"


class TaskLogLine(_In):
    message: Annotated[str, Meta(min_length=1, max_length=10_000)]
    level: Literal["debug", "info", "warning", "error"] = "info"


class TaskLogsIn(_In):
    lines: Annotated[list[TaskLogLine], Meta(min_length=1, max_length=MAX_LOG_LINES)]


class TaskDone(_Out):
    task_id: str
    execution_id: str
    step_status: Annotated[str, Meta(description="completed or failed (an output over ORQ_MAX_OUTPUT_BYTES fails it)")]
    execution_status: str
