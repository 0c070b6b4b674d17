"""Triggers: created, replaced and deleted as events (checked on Redis state), listed from the SQL projection.

Every config is validated for its type before anything is written: a bad cron, time zone or glob, an unknown
workflow, or a chain that would loop is a 422 naming the field. Webhook and email tokens are generated here
(160 random bits) and never chosen by the client.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from sqlalchemy import Row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_tenant
from services.api.bodies import check_json_value, read_json
from services.api.context import ApiContext, context
from services.api.listing import one_of
from services.api.ownership import MAX_ID_LENGTH, owned, owned_row, owned_workflow
from services.api.pagination import live_page, page_request
from services.api.priority import check_priority
from services.api.schemas import Trigger, TriggerIn, TriggerPage
from shared.domain.aggregates import TenantState
from shared.domain.triggers import cron
from shared.domain.triggers.definitions import (
    CHAINS_GUARD,
    MAX_CONFIG_BYTES,
    REV_GUARD,
    TOKEN_TYPES,
    TRIGGER_TYPES,
    Config,
    Draft,
    EmailConfig,
    FileWatcherConfig,
    QueueItemConfig,
    ScheduleConfig,
    TriggerState,
    WebhookConfig,
    WorkflowCompletedConfig,
    chain_edges,
    check_glob,
    decode_config,
    delete_unit,
    encode_config,
    find_cycle,
    new_token,
    read_trigger,
    save_unit,
)
from shared.infra.clock import iso, new_id, now_ms
from shared.infra.errors import Conflict, NotFound, ValidationFailed
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Refused
from shared.log.redis import text
from shared.readmodel.schema import workflow_triggers

WEBHOOK_PATH = "/api/triggers/webhook/{token}"


async def owned_trigger(ctx: ApiContext, tenant: TenantState, trigger_id: str) -> TriggerState:
    """The tenant's trigger; anything else (unknown, deleted, another tenant's) is a 404."""
    return await owned("trigger", trigger_id, tenant, lambda i: read_trigger(ctx.redis, tenant.partition, i))


def public_base(request: Request, settings: Settings) -> str:
    """Where clients reach this API (``ORQ_PUBLIC_URL`` behind a proxy, else what this request used)."""
    return settings.public_url or str(request.base_url).rstrip("/")


def trigger_view(
    trigger_id: str,
    fields: dict[str, Any],
    base: str,
    settings: Settings,
) -> Trigger:
    """``fields``: workflow_id, trigger_type, config, enabled, trigger_count, last_triggered_at, created_at,
    updated_at (times in ms)."""
    config: dict[str, Any] = fields["config"]
    token = str(config.get("token", ""))
    kind = fields["trigger_type"]
    return Trigger(
        id=trigger_id,
        workflow_id=fields["workflow_id"],
        trigger_type=kind,
        config=config,
        enabled=bool(fields["enabled"]),
        trigger_count=int(fields["trigger_count"] or 0),
        last_triggered_at=iso(fields["last_triggered_at"]),
        created_at=iso(fields["created_at"]),
        updated_at=iso(fields["updated_at"]),
        webhook_url=f"{base}{WEBHOOK_PATH.format(token=token)}" if kind == "webhook" and token else None,
        email_address=f"{token}@{settings.email_domain}" if kind == "email" and token else None,
        next_fire_times=_next_fire_times(config, bool(fields["enabled"])) if kind == "schedule" else None,
    )


def _next_fire_times(config: dict[str, Any], enabled: bool) -> list[str]:
    """Computed on every read, never stored: they move with the clock (a disabled trigger has none). A schedule
    saved under an older rule that no longer parses lists none rather than failing the whole response."""
    if not enabled:
        return []
    try:
        schedule = cron.parse(str(config.get("cron", "")), str(config.get("timezone") or "UTC"))
    except ValidationFailed:
        return []
    return schedule.upcoming(now_ms())


def _state_fields(state: TriggerState) -> dict[str, Any]:
    return {
        "workflow_id": state.workflow_id,
        "trigger_type": state.type,
        "config": state.config,
        "enabled": state.enabled,
        "trigger_count": state.count,
        "last_triggered_at": state.last_fired_at,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


def _row_fields(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


# --- validation -------------------------------------------------------------------------------------------------


def _folder(raw: str, settings: Settings) -> str:
    """The watched folder, normalised; inside ``ORQ_WATCH_ROOT`` when one is set (relative paths start there)."""
    field = "config.folder"
    if "\0" in raw or not raw.isprintable():
        raise ValidationFailed(f"{field}: not a folder path", field=field)
    root = os.path.normpath(settings.watch_root) if settings.watch_root else ""
    if not os.path.isabs(raw):
        if not root:
            raise ValidationFailed(f"{field}: an absolute path", field=field)
        raw = os.path.join(root, raw)
    folder = os.path.normpath(raw)
    if root and os.path.commonpath([root, folder]) != root:
        raise ValidationFailed(f"{field}: must be inside {root} (ORQ_WATCH_ROOT)", field=field, root=root)
    return folder


def _token(config: WebhookConfig | EmailConfig, previous: TriggerState | None) -> str:
    """The trigger's token: kept across saves of a token type, else new; a client never chooses one."""
    kept = str(previous.config.get("token", "")) if previous is not None and previous.type in TOKEN_TYPES else ""
    if config.token and config.token != kept:
        raise ValidationFailed("config.token: generated by the server; leave it out (or send the current one)",
                               field="config.token")
    return kept or new_token()


async def _check_type(
    ctx: ApiContext, tenant: TenantState, body: TriggerIn, config: Config, trigger_id: str
) -> tuple[Config, str | None]:
    """Checks that need the type (and sometimes Redis); returns the config to store and the chains revision."""
    match config:
        case ScheduleConfig():
            cron.validate(config.cron, config.timezone, now_ms())
        case FileWatcherConfig():
            check_glob(config.glob)
            config = msgspec.structs.replace(config, folder=_folder(config.folder, ctx.settings))
        case WorkflowCompletedConfig():
            try:
                await owned_workflow(ctx, tenant, config.workflow_id)
            except NotFound:
                raise ValidationFailed(f"config.workflow_id: no workflow {config.workflow_id}",
                                       field="config.workflow_id") from None
            rev, edges = await chain_edges(ctx.redis, tenant.partition, tenant.id)
            edges.pop(trigger_id, None)
            cycle = find_cycle(edges, config.workflow_id, body.workflow_id)
            if cycle is not None:
                raise ValidationFailed("config.workflow_id: this chain would start a cycle: " + " → ".join(cycle),
                                       field="config.workflow_id", cycle=cycle)
            return config, rev
        case QueueItemConfig():
            queue = await ctx.redis.hget(keys.queue(tenant.partition, config.queue_id), "tenant")
            if text(queue) != tenant.id:
                raise ValidationFailed(f"config.queue_id: no queue {config.queue_id}", field="config.queue_id")
        case _:
            pass
    return config, None


async def _draft(
    ctx: ApiContext, tenant: TenantState, body: TriggerIn, trigger_id: str, previous: TriggerState | None
) -> tuple[Draft, str | None]:
    try:
        await owned_workflow(ctx, tenant, body.workflow_id)
    except NotFound:
        raise ValidationFailed(f"workflow_id: no workflow {body.workflow_id}", field="workflow_id") from None
    config = decode_config(body.trigger_type, body.config)
    check_json_value(config.params, "config.params")
    if config.priority is not None:
        check_priority(config.priority, ctx.plan(tenant.plan), "config.priority")
    if isinstance(config, WebhookConfig | EmailConfig):
        config = msgspec.structs.replace(config, token=_token(config, previous))
    config, chains_rev = await _check_type(ctx, tenant, body, config, trigger_id)
    stored = encode_config(config)
    if len(responses.encode(stored)) > MAX_CONFIG_BYTES:
        raise ValidationFailed(f"config: at most {MAX_CONFIG_BYTES} bytes of JSON", field="config")
    return Draft(tenant.id, body.workflow_id, body.trigger_type, stored, body.enabled), chains_rev


# --- routes -----------------------------------------------------------------------------------------------------


async def create_trigger(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    body = await read_json(request, TriggerIn)
    trigger_id = new_id()

    async def attempt() -> Response | Moved:
        draft, chains_rev = await _draft(ctx, tenant, body, trigger_id, None)
        outcome = await ctx.committer.commit(save_unit(tenant.partition, trigger_id, draft, None, now_ms(), chains_rev))
        if isinstance(outcome, Applied):
            return await _reply(request, ctx, tenant, trigger_id, 201)
        if not (isinstance(outcome, Refused) and outcome.label == CHAINS_GUARD):
            raise Conflict("trigger id collision, try again")
        return MOVED

    return await optimistically(attempt, exhausted=Conflict("triggers are being changed concurrently, try again"))


async def update_trigger(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    trigger_id = request.path_params["id"]
    await owned_trigger(ctx, tenant, trigger_id)
    body = await read_json(request, TriggerIn)

    async def attempt() -> Response | Moved:
        previous = await owned_trigger(ctx, tenant, trigger_id)
        draft, chains_rev = await _draft(ctx, tenant, body, trigger_id, previous)
        unit = save_unit(tenant.partition, trigger_id, draft, previous, now_ms(), chains_rev)
        outcome = await ctx.committer.commit(unit)
        if isinstance(outcome, Applied):
            return await _reply(request, ctx, tenant, trigger_id, 200)
        if isinstance(outcome, Refused) and outcome.label not in (REV_GUARD, CHAINS_GUARD):
            raise NotFound(f"trigger {trigger_id} not found")
        return MOVED

    return await optimistically(attempt, exhausted=_busy())


async def delete_trigger(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    trigger_id = request.path_params["id"]

    async def attempt() -> Response | Moved:
        previous = await owned_trigger(ctx, tenant, trigger_id)
        if isinstance(await ctx.committer.commit(delete_unit(tenant.partition, previous, now_ms())), Applied):
            return responses.no_content()
        return MOVED

    return await optimistically(attempt, exhausted=_busy())


def _busy() -> Conflict:
    return Conflict("the trigger is being changed or fired concurrently, try again")


async def _reply(request: Request, ctx: ApiContext, tenant: TenantState, trigger_id: str, status: int) -> Response:
    state = await read_trigger(ctx.redis, tenant.partition, trigger_id)
    if state is None:  # deleted between our commit and this read
        raise NotFound(f"trigger {trigger_id} not found")
    view = trigger_view(trigger_id, _state_fields(state), public_base(request, ctx.settings), ctx.settings)
    return responses.json(view, status)


async def get_trigger(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    trigger_id = request.path_params["id"]
    row = await owned_row(ctx.engine, workflow_triggers, "trigger", trigger_id, tenant)
    return responses.json(trigger_view(trigger_id, _row_fields(row), public_base(request, ctx.settings),
                                       ctx.settings))


async def list_triggers(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    page = page_request(request)
    c = workflow_triggers.c
    conditions = []
    workflow_id = request.query_params.get("workflow_id")
    if workflow_id:
        if len(workflow_id) > MAX_ID_LENGTH:
            raise ValidationFailed("workflow_id: too long", field="workflow_id")
        conditions.append(c.workflow_id == workflow_id)
    kind = request.query_params.get("trigger_type")
    if kind:
        conditions.append(c.trigger_type == one_of("trigger_type", kind, TRIGGER_TYPES))
    items, cursor = await live_page(ctx.engine, workflow_triggers, tenant.id, page, *conditions)
    base = public_base(request, ctx.settings)
    return responses.json(TriggerPage(items=[trigger_view(r.id, _row_fields(r), base, ctx.settings) for r in items],
                                      next_cursor=cursor))


routes = [
    Route("/api/triggers", create_trigger, methods=["POST"]),
    Route("/api/triggers", list_triggers, methods=["GET"]),
    Route("/api/triggers/{id}", get_trigger, methods=["GET"]),
    Route("/api/triggers/{id}", update_trigger, methods=["PUT"]),
    Route("/api/triggers/{id}", delete_trigger, methods=["DELETE"]),
]
