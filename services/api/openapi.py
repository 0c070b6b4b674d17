"""The OpenAPI 3.1 document, built from the operation table below and the Structs of ``schemas.py``.

Every route of the app has an entry here (a test checks both ways). Errors are listed per operation from
what it can do: authenticate (401/403), read a body (400/413/422), look up an id (404), and so on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses, schemas
from services.api.context import context
from services.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from services.api.routes import history, ws
from shared.domain.actions.schemas import MAX_DELAY_MS
from shared.domain.aggregates import Status
from shared.domain.triggers.definitions import EXECUTION_SOURCES, TRIGGER_TYPES
from shared.infra.settings import Settings

REF = "#/components/schemas/{name}"
Auth = Literal["tenant", "admin", "robot", "none"]


class PlainText:
    """Marker for a ``text/plain`` response (the Prometheus exposition format)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: what it takes, what it answers, and which errors it can give."""

    method: str
    path: str
    summary: str
    tag: str
    ok: Mapping[int, type | None]
    auth: Auth = "tenant"
    body: type | None = None
    body_required: bool = True
    query: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()
    headers: tuple[dict[str, Any], ...] = ()


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


PAGE = (
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}, "page size"),
    _query("cursor", {"type": "string"}, "`next_cursor` of the previous page"),
)
HISTORY_PAGE = (
    _query("limit", {"type": "integer", "minimum": 1, "maximum": history.MAX_LIMIT, "default": history.DEFAULT_LIMIT},
           "page size"),
    _query("cursor", {"type": "string"}, "`next_cursor` of the previous page"),
)
AS_OF = _query(
    "as_of",
    {"type": "string"},
    "the execution as it stood at this point: a stream id (`<ms>` or `<ms>-<seq>`, as events' `id`) or an "
    "ISO-8601 time (UTC when it has no offset); 404 if it had not been queued yet",
)
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": "A repeat of the request with the same key within 24 h gets the first reply.",
}

OPS: tuple[Op, ...] = (
    Op(
        "post",
        "/api/tenants",
        "Create a tenant and its API key",
        "tenants",
        {201: schemas.Tenant},
        auth="admin",
        body=schemas.TenantCreate,
    ),
    Op(
        "get",
        "/api/tenants/me",
        "The caller's tenant: plan, limits, usage this month",
        "tenants",
        {200: schemas.TenantProfile},
    ),
    Op(
        "patch",
        "/api/tenants/{id}",
        "Change a tenant's plan, or pause/resume it (its queued work waits)",
        "tenants",
        {200: schemas.TenantAdmin},
        auth="admin",
        body=schemas.TenantUpdate,
        errors=(404,),
    ),
    Op("post", "/api/workflows/{id}/pause", "Pause a workflow: its queued executions wait", "workflows",
       {200: schemas.WorkflowPause}, body=None, errors=(404,)),
    Op("post", "/api/workflows/{id}/resume", "Resume a workflow: its waiting executions run", "workflows",
       {200: schemas.WorkflowPause}, body=None, errors=(404,)),
    Op("post", "/api/workflows", "Save a new workflow", "workflows", {201: schemas.Workflow}, body=schemas.WorkflowIn),
    Op("get", "/api/workflows", "List workflows", "workflows", {200: schemas.WorkflowPage}, query=PAGE, errors=(422,)),
    Op("get", "/api/workflows/{id}", "Get a workflow", "workflows", {200: schemas.Workflow}),
    Op(
        "put",
        "/api/workflows/{id}",
        "Save a new version of a workflow",
        "workflows",
        {200: schemas.Workflow},
        body=schemas.WorkflowIn,
        errors=(409,),
    ),
    Op("delete", "/api/workflows/{id}", "Delete a workflow (queued runs keep their version)", "workflows", {204: None}),
    Op(
        "post",
        "/api/workflows/{id}/execute",
        "Queue one execution",
        "executions",
        {202: schemas.Queued},
        body=schemas.ExecuteIn,
        body_required=False,
        errors=(409, 429),
        headers=(IDEMPOTENCY,),
    ),
    Op(
        "post",
        "/api/workflows/{id}/execute/bulk",
        "Queue up to 1000 executions, all or nothing",
        "executions",
        {202: schemas.BulkQueued},
        body=schemas.BulkExecuteIn,
        errors=(409, 429),
        headers=(IDEMPOTENCY,),
    ),
    Op(
        "get",
        "/api/executions",
        "List executions, newest first",
        "executions",
        {200: schemas.ExecutionPage},
        query=(
            _query("status", {"type": "string", "enum": [s.value for s in Status]}, "only this status"),
            _query("workflow_id", {"type": "string"}, "only this workflow's"),
            _query("trigger_type", {"type": "string", "enum": list(EXECUTION_SOURCES)}, "only those started this way"),
            *PAGE,
        ),
        errors=(422,),
    ),
    Op("get", "/api/executions/{id}", "Get an execution with its steps (as it stood then, with `as_of`)",
       "executions", {200: schemas.Execution}, query=(AS_OF,), errors=(422,)),
    Op("get", "/api/executions/{id}/events", "An execution's events in log order, as the WebSocket feed sends them",
       "executions", {200: schemas.EventPage}, query=HISTORY_PAGE, errors=(422,)),
    Op("get", "/api/executions/{id}/logs", "An execution's log lines (execution.log events) in log order",
       "executions", {200: schemas.LogPage}, query=HISTORY_PAGE, errors=(422,)),
    Op(
        "patch",
        "/api/executions/{id}",
        "Change the priority of a queued execution",
        "executions",
        {200: schemas.CommandAccepted},
        body=schemas.PriorityIn,
        errors=(409,),
    ),
    Op(
        "post",
        "/api/executions/{id}/cancel",
        "Cancel an execution",
        "executions",
        {202: schemas.CommandAccepted},
        errors=(409,),
    ),
    Op(
        "post",
        "/api/executions/{id}/retry",
        "Retry a failed or cancelled execution",
        "executions",
        {202: schemas.CommandAccepted},
        errors=(409,),
    ),
    # --- work queues (services/api/routes/queues.py, queue_items.py) ---
    Op("post", "/api/queues", "Create a work queue (names are unique per tenant, regardless of case)", "queues",
       {201: schemas.Queue}, body=schemas.QueueIn, errors=(409,)),
    Op("get", "/api/queues", "List work queues, newest first", "queues", {200: schemas.QueuePage}, query=PAGE,
       errors=(422,)),
    Op("get", "/api/queues/{id}", "Get a work queue", "queues", {200: schemas.Queue}),
    Op("put", "/api/queues/{id}", "Change a work queue's settings (only the fields given)", "queues",
       {200: schemas.Queue}, body=schemas.QueueUpdateIn, errors=(409,)),
    Op("delete", "/api/queues/{id}", "Delete a work queue: its items can no longer be claimed", "queues", {204: None}),
    Op("get", "/api/queues/{id}/stats",
       "Items by status, mean processing time, SLA breaches and items at risk of breaching", "queues",
       {200: schemas.QueueStats}),
    Op("post", "/api/queues/{id}/items", "Add an item", "queues", {201: schemas.QueueItem},
       body=schemas.QueueItemIn, errors=(409,)),
    Op("get", "/api/queues/{id}/items", "List a queue's items, newest first", "queues", {200: schemas.QueueItemPage},
       query=(_query("status", {"type": "string", "enum": ["new", "in_progress", "completed", "failed", "abandoned",
                                                           "retried"]}, "only this status"),
              _query("reference", {"type": "string", "maxLength": 200}, "only items with this reference"), *PAGE),
       errors=(422,)),
    Op("post", "/api/queues/{id}/items/bulk", "Add up to 10,000 items, all or nothing (errors name the item's index)",
       "queues", {201: schemas.QueueItemsAdded}, body=schemas.QueueItemsBulkIn, errors=(409,)),
    Op("post", "/api/queues/{id}/items/next",
       "Claim the next item: deadlines first (earliest first), then priority, then oldest; 204 when none is ready",
       "queues", {200: schemas.QueueItem, 204: None}, body=schemas.ClaimIn, body_required=False),
    Op("get", "/api/queues/{id}/items/{item_id}", "Get an item with its history", "queues",
       {200: schemas.QueueItemDetail}),
    Op("put", "/api/queues/{id}/items/{item_id}",
       "Finish an item in progress (completed, or failed: business final, application retried while retries are "
       "left), or record its progress", "queues", {200: schemas.QueueItem}, body=schemas.QueueItemUpdateIn,
       errors=(409,)),
    # --- robots (services/api/routes/robots.py) ---
    Op("post", "/api/robots", "Register a robot (names are unique per tenant, regardless of case); its key is shown "
       "once", "robots", {201: schemas.RobotRegistered}, body=schemas.RobotIn, errors=(409,)),
    Op("get", "/api/robots", "List robots with their live status, newest first", "robots", {200: schemas.RobotPage},
       query=(_query("pool", {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"}, "only this pool's"), *PAGE),
       errors=(422,)),
    Op("get", "/api/robots/me", "The calling robot itself (robot key)", "robots", {200: schemas.RobotSelf},
       auth="robot"),
    Op("get", "/api/robots/{id}", "Get a robot with its live status", "robots", {200: schemas.Robot}),
    Op("delete", "/api/robots/{id}", "Delete a robot: its key stops working at once", "robots", {204: None}),
    # --- robot tasks (services/api/routes/robot_tasks.py): a stale task id is a 409 whose code says why ---
    Op("post", "/api/robots/tasks/next", "Take the next task offered to the robot's pool (long poll up to wait_s; "
       "204 when nothing came)", "robots", {200: schemas.Task, 204: None}, auth="robot", body=schemas.TaskNextIn,
       body_required=False),
    Op("post", "/api/robots/tasks/{task_id}/heartbeat", "Renew the task's lease, report progress (409 lease_lost "
       "or cancelled: stop)", "robots", {200: schemas.Lease}, auth="robot", body=schemas.HeartbeatIn,
       body_required=False, errors=(409,)),
    Op("post", "/api/robots/tasks/{task_id}/complete", "Complete the task's step with its output", "robots",
       {200: schemas.TaskDone}, auth="robot", body=schemas.TaskCompleteIn, body_required=False, errors=(409,)),
    Op("post", "/api/robots/tasks/{task_id}/fail", "Fail the task's step (the workflow's retry policy decides "
       "what follows)", "robots", {200: schemas.TaskDone}, auth="robot", body=schemas.TaskFailIn,
       errors=(409,)),
    Op("post", "/api/robots/tasks/{task_id}/logs", "Add log lines to the task's execution", "robots", {204: None},
       auth="robot", body=schemas.TaskLogsIn, errors=(409,)),
    Op("get", "/api/dlq", "List dead-lettered executions", "dlq", {200: schemas.DlqPage}, query=PAGE, errors=(422,)),
    Op(
        "get",
        "/api/notifications",
        "List notification deliveries (webhooks, emails), newest first",
        "notifications",
        {200: schemas.NotificationPage},
        query=(
            _query("execution_id", {"type": "string"}, "only this execution's"),
            _query("status", {"type": "string", "enum": ["pending", "retrying", "sent", "failed"]}, "only this status"),
            *PAGE,
        ),
        errors=(422,),
    ),
    Op(
        "post",
        "/api/notifications/{id}/resend",
        "Send a sent or failed notification again (a new series of attempts, same body)",
        "notifications",
        {202: schemas.ResendAccepted},
        errors=(409,),
    ),
    Op(
        "post",
        "/api/dlq/{execution_id}/retry",
        "Retry a dead-lettered execution",
        "dlq",
        {202: schemas.CommandAccepted},
        errors=(409,),
    ),
    Op("delete", "/api/dlq/{execution_id}", "Purge an execution from the dead-letter queue", "dlq", {204: None}),
    Op("get", "/healthz", "Liveness", "health", {200: schemas.Health}, auth="none"),
    Op(
        "get",
        "/readyz",
        "Readiness: Redis and SQL answer",
        "health",
        {200: schemas.Readiness},
        auth="none",
        errors=(503,),
    ),
    Op("get", "/api", "An index of the API: its collections, the event feed, this document, the reference page",
       "meta", {200: dict}, auth="none"),
    Op("get", "/openapi.json", "This document", "meta", {200: dict}, auth="none"),
    Op("get", "/", "The dashboard (static page; it asks for a tenant key)", "meta", {200: str}, auth="none"),
    Op("get", "/reference", "This document as a readable page (static; renders /openapi.json)", "meta", {200: str},
       auth="none"),
    Op("get", "/api/stats", "Execution statistics: counts, depth, throughput, durations, error rate", "stats",
       {200: schemas.Stats}),
    Op("get", "/metrics", "Prometheus metrics (orq_*), every tenant together", "stats", {200: PlainText},
       auth="none", errors=(503,)),
    # --- triggers (services/api/routes/triggers.py, webhooks.py) ---
    Op("post", "/api/triggers", "Create a trigger (per-type config, see docs/triggers.md)", "triggers",
       {201: schemas.Trigger}, body=schemas.TriggerIn, errors=(409,)),
    Op("get", "/api/triggers", "List triggers, newest first", "triggers", {200: schemas.TriggerPage},
       query=(_query("workflow_id", {"type": "string"}, "only the triggers starting this workflow"),
              _query("trigger_type", {"type": "string", "enum": list(TRIGGER_TYPES)}, "only this type"), *PAGE),
       errors=(422,)),
    Op("get", "/api/triggers/{id}", "Get a trigger", "triggers", {200: schemas.Trigger}),
    Op("put", "/api/triggers/{id}", "Replace a trigger (a webhook or email trigger keeps its token)", "triggers",
       {200: schemas.Trigger}, body=schemas.TriggerIn, errors=(409,)),
    Op("delete", "/api/triggers/{id}", "Delete a trigger: it never fires again", "triggers", {204: None}),
    Op("post", "/api/triggers/webhook/{token}",
       "Fire a webhook trigger: the JSON body becomes the run's params. Public: the token is the credential. "
       "When the trigger has a `secret`, sign with `X-Orq-Timestamp` (Unix seconds) and `X-Orq-Signature: "
       "sha256=<hex HMAC-SHA256(secret, timestamp + '.' + raw body)>`; 5 minutes' tolerance, each signature once.",
       "triggers", {202: schemas.WebhookAccepted}, auth="none", body=dict, body_required=False,
       errors=(401, 409, 429, 503),
       headers=(
           {"name": "X-Orq-Timestamp", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Unix time in seconds (signed webhooks)"},
           {"name": "X-Orq-Signature", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "sha256=<hex HMAC-SHA256> (signed webhooks)"},
       )),
)

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Malformed request",
    401: "Missing or invalid API key",
    403: "Not allowed with this key",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Body too large",
    422: "Invalid request",
    429: "Monthly quota exceeded",
    503: "A backing store is unavailable",
}


def _error_statuses(op: Op) -> set[int]:
    statuses = set(op.errors)
    if op.auth != "none":
        statuses |= {401, 403, 503}
    if op.body is not None:
        statuses |= {400, 413, 422}
    if "{" in op.path:
        statuses.add(404)
    if op.headers:
        statuses.add(422)
    return statuses


def _content(kind: type | None) -> dict[str, Any] | None:
    if kind is None:
        return None
    if kind is str:
        return {"text/html": {"schema": {"type": "string"}}}
    if kind is dict:
        return {"application/json": {"schema": {"type": "object"}}}
    if kind is PlainText:
        return {"text/plain": {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": REF.format(name=kind.__name__)}}}


def _response(status: int, kind: type | None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "")}
    content = _content(kind)
    if content is not None:
        out["content"] = content
    if status == 429:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to the reset"}}
    return out


def _operation(op: Op) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in _path_params(op.path)
    ]
    params += [*op.query, *op.headers]
    out: dict[str, Any] = {
        "operationId": f"{op.method}_{_slug(op.path)}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": {
            str(status): _response(status, kind)
            for status, kind in sorted({**op.ok, **{s: schemas.Error for s in _error_statuses(op)}}.items())
        },
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _content(op.body)}
    if op.auth == "none":
        out["security"] = []
    elif op.auth == "admin":
        out["description"] = "Needs the admin token (`ORQ_ADMIN_TOKEN`)."
    elif op.auth == "robot":
        out["description"] = "Needs a robot key (`orqr_…`, from `POST /api/robots`); a tenant API key gets 403."
    return out


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "_").replace(".", "_").replace("{", "").replace("}", "") or "home"


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _components(settings: Settings, action_types: Mapping[str, type[msgspec.Struct]]) -> dict[str, Any]:
    types = {
        t for op in OPS for t in (op.body, *op.ok.values()) if isinstance(t, type) and issubclass(t, msgspec.Struct)
    }
    types |= {schemas.Error, *action_types.values()}
    _, components = msgspec.json.schema_components(sorted(types, key=lambda t: t.__name__), ref_template=REF)
    components["TenantCreate"]["properties"]["plan"]["enum"] = sorted(settings.plans)
    if "DelayParams" in components:  # bounds checked by shared.domain.actions.schemas.validate_step
        components["DelayParams"]["properties"]["ms"].update(minimum=0, maximum=MAX_DELAY_MS)
    components["StepIn"] = _step_variants(components["StepIn"], components, action_types)
    return components


def _step_variants(
    step: dict[str, Any], components: dict[str, Any], action_types: Mapping[str, type[msgspec.Struct]]
) -> dict[str, Any]:
    """A step is one of the installed actions, each with its own params schema."""
    variants = []
    for action, params_type in sorted(action_types.items()):
        params_schema = components[params_type.__name__]
        variants.append(
            {
                **step,
                "title": f"StepIn[{action}]",
                "properties": {
                    **step["properties"],
                    "action": {"const": action},
                    "params": {"$ref": REF.format(name=params_type.__name__)},
                },
                "required": ["action", "params"] if params_schema.get("required") else ["action"],
            }
        )
    return {
        "title": "StepIn",
        "description": "A step: an action and its params. Any param value may also be a template, "
        "`{{ params.x }}` or `{{ steps.N.output.y }}` (N an earlier step), resolved when the step runs.",
        "oneOf": variants,
    }


def build(settings: Settings, action_types: Mapping[str, type[msgspec.Struct]]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Orquesta",
            "version": "1",
            "description": "Event-sourced workflow orchestration. Authenticate with `Authorization: Bearer <key>`: "
            "a tenant API key, or the admin token for tenant management.",
        },
        "paths": paths,
        "components": {
            "schemas": _components(settings, action_types),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "x-websockets": ws.OPENAPI,
    }


async def openapi(request: Request) -> Response:
    document: bytes | None = getattr(request.app.state, "openapi", None)
    if document is None:
        ctx = context(request)
        document = request.app.state.openapi = responses.encode(build(ctx.settings, ctx.action_types))
    return responses.raw_json(document)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
