"""Requesting executions: one run or a bulk of runs, admitted atomically with the monthly quota.

Every request goes through :func:`shared.domain.executions.admission.admission_unit`: the quota is checked and
counted, the ``execution.queued`` events appended and the work entries added in one Lua call, all or nothing. An
``Idempotency-Key`` stores the reply with the unit, so a repeat gets the first reply for 24 h.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.bodies import check_json_value, read_json
from services.api.context import ApiContext, context
from services.api.errors import BacklogFull, QuotaRefused
from services.api.ownership import owned_workflow, tenant_and_workflow
from services.api.priority import check_priority
from services.api.responses import as_bytes
from services.api.schemas import BulkExecuteIn, BulkQueued, ExecuteIn, Queued, RunIn
from shared.domain.aggregates import TenantState, WorkflowState
from shared.domain.executions.admission import BACKLOG_GUARD, QUOTA_GUARD, WORKFLOW_CHANGED_GUARD, Run, admission_unit
from shared.infra.clock import iso, month_end_ms, month_of, new_id, now_ms
from shared.infra.errors import Conflict, NotFound, ValidationFailed
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.infra.plans import Plan
from shared.log import keys
from shared.log.commit import Applied, Duplicate, Refused, Unit
from shared.log.events import QuotaExceeded

IDEMPOTENCY_HEADER = "idempotency-key"
MAX_IDEMPOTENCY_KEY = 200
# A concurrent save changes the version between our read and the commit: read again, once.
ADMIT_ATTEMPTS = 2

BACKLOG_RETRY_AFTER_S = 30  # a full backlog drains at the tenant's own pace: come back in a while


def _run(body: RunIn, plan: Plan, where: str) -> Run:
    check_json_value(body.params, f"{where}params")
    priority = plan.default_priority if body.priority is None else body.priority
    return Run(new_id(), check_priority(priority, plan, f"{where}priority"), body.params)


def _idempotency_key(request: Request, tenant: TenantState) -> str | None:
    """The Redis key recording the reply to this ``Idempotency-Key``.

    Scoped to the endpoint (method, path): a key reused on another workflow or on the bulk endpoint is
    another request, and must never get a reply of another shape back.
    """
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY or not raw.isprintable():
        raise ValidationFailed(
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable characters", field="Idempotency-Key"
        )
    return keys.idempotency(tenant.partition, tenant.id, f"{request.method} {request.url.path} {raw}")


async def _admit(request: Request, ctx: ApiContext, tenant: TenantState, workflow: WorkflowState,
                 runs: Sequence[Run], body: bytes, trigger_type: str = "api") -> Response:
    """Queue ``runs`` of ``workflow`` (as just read) and answer 202 with ``body`` (or with the first reply to
    the same idempotency key)."""
    idem_key = _idempotency_key(request, tenant)
    if idem_key is not None and (stored := await ctx.redis.get(idem_key)) is not None:
        return responses.raw_json(as_bytes(stored), 202)
    plan = ctx.plan(tenant.plan)
    rounds = 0

    async def attempt() -> Response | Moved:
        nonlocal rounds
        # After the first round the workflow was saved under us: admit against its new version.
        latest = await owned_workflow(ctx, tenant, workflow.id) if rounds else workflow
        rounds += 1
        definition = await ctx.definitions.read(ctx.redis, tenant.partition, latest.id, latest.version)
        if definition is None:
            raise NotFound(f"workflow {workflow.id} not found")
        now = now_ms()
        unit = admission_unit(
            p=tenant.partition,
            tenant_id=tenant.id,
            plan=plan,
            workflow=latest,
            definition=definition,
            runs=runs,
            now_ms=now,
            trigger_type=trigger_type,
            idempotency=(idem_key, body) if idem_key is not None else None,
        )
        match await ctx.committer.commit(unit):
            case Applied():
                return responses.raw_json(body, 202)
            case Duplicate(stored=stored):
                return responses.raw_json(stored, 202)
            case Refused(label=label, actual=actual) if label == QUOTA_GUARD:
                raise await _quota_exceeded(ctx, tenant, plan, int(actual or 0), len(runs), now)
            case Refused(label=label, actual=actual) if label == BACKLOG_GUARD:
                raise BacklogFull(
                    f"{actual} executions already waiting; the {tenant.plan} plan allows {plan.max_backlog}",
                    retry_after_s=BACKLOG_RETRY_AFTER_S, limit=plan.max_backlog, queued=int(actual or 0),
                )
            case Refused(label=label) if label == WORKFLOW_CHANGED_GUARD:
                return MOVED
            case Refused():
                raise NotFound(f"workflow {workflow.id} not found")

    return await optimistically(attempt, attempts=ADMIT_ATTEMPTS,
                                exhausted=Conflict("the workflow is being changed concurrently, try again"))


async def _quota_exceeded(
    ctx: ApiContext, tenant: TenantState, plan: Plan, used: int, requested: int, now: int
) -> QuotaRefused:
    """Record the refusal (its own unit: nothing was queued) and build the 429."""
    month = month_of(now)
    event = QuotaExceeded(
        tenant_id=tenant.id,
        aggregate_id=tenant.id,
        ts=now,
        limit=plan.monthly_quota,
        used=used,
        requested=requested,
        month=month,
    )
    await ctx.committer.commit(Unit(tenant.partition).event(event))
    resets = month_end_ms(now)
    return QuotaRefused(
        f"monthly quota of {plan.monthly_quota} executions exceeded ({used} used, {requested} requested)",
        retry_after_s=max(1, math.ceil((resets - now) / 1000)),
        limit=plan.monthly_quota,
        used=used,
        requested=requested,
        resets_at=iso(resets),
    )


async def execute(request: Request) -> Response:
    # An unknown workflow is a 404, whatever the body.
    tenant, workflow = await tenant_and_workflow(request, request.path_params["id"])
    ctx = context(request)
    body = await read_json(request, ExecuteIn, empty=ExecuteIn())
    run = _run(body, ctx.plan(tenant.plan), "")
    reply = Queued(execution_id=run.execution_id, status="queued", priority=run.priority)
    return await _admit(request, ctx, tenant, workflow, [run], responses.encode(reply), body.trigger_type)


async def execute_bulk(request: Request) -> Response:
    tenant, workflow = await tenant_and_workflow(request, request.path_params["id"])
    ctx = context(request)
    body = await read_json(request, BulkExecuteIn)
    plan = ctx.plan(tenant.plan)
    runs = [_run(run, plan, f"runs[{i}].") for i, run in enumerate(body.runs)]
    reply = BulkQueued(execution_ids=[r.execution_id for r in runs])
    return await _admit(request, ctx, tenant, workflow, runs, responses.encode(reply), body.trigger_type)


routes = [
    Route("/api/workflows/{id}/execute", execute, methods=["POST"]),
    Route("/api/workflows/{id}/execute/bulk", execute_bulk, methods=["POST"]),
]
