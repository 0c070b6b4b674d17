"""``POST /api/triggers/webhook/{token}``: the public entry of webhook triggers.

No API key: the token in the path is the credential (160 random bits, compared by its SHA-256 through an
index). Order of checks: unknown or disabled token → 404 (the same answer for both, so a token's existence
leaks nothing); an unsigned trigger's rate → 429 (before its body is read); a body over 1 MiB → 413; a
signed trigger's missing, bad, stale or replayed signature → 401, then its rate → 429; a bad body →
400/422; then the firing, which is admitted like any execution (429 over the monthly quota).

Rate budgets, per trigger and minute: the calls the trigger accepts (``config.rate_per_minute``, default
``ORQ_HOOK_RATE_PER_MINUTE``) and, apart, the calls a signed trigger refuses (``ORQ_HOOK_REFUSED_PER_MINUTE``,
past which they get 429 instead of 401). Refused calls never spend the accepted budget, so anyone who knows
the URL but not the secret cannot lock the real sender out.

Signatures (when the trigger's ``config.secret`` is set): the sender puts the Unix time in seconds in
``X-Orq-Timestamp`` and ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`` in
``X-Orq-Signature``. A timestamp more than 5 minutes away from ours is refused, the comparison is constant
time, and a signature is accepted once: it is claimed in the same unit as the firing it caused.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.bodies import check_json_value
from services.api.context import ApiContext, context
from services.api.errors import QuotaRefused
from services.api.schemas import WebhookAccepted
from shared.domain.triggers.definitions import TriggerState, find_by_token
from shared.domain.triggers.firing import Fired, Firer, NotFired, Once, Skipped
from shared.domain.triggers.firing import Request as FireRequest
from shared.infra.clock import iso, month_end_ms, now_ms
from shared.infra.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OrqError,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)
from shared.log import keys
from shared.service import metrics

MAX_BODY_BYTES = 1024 * 1024
TOLERANCE_S = 300
TIMESTAMP_HEADER = "x-orq-timestamp"
SIGNATURE_HEADER = "x-orq-signature"
SIGNATURE_PREFIX = "sha256="
_NOT_FOUND = "no such webhook"
_object_decoder = msgspec.json.Decoder(dict[str, Any])


class TooManyRequests(OrqError):
    """Over a limit that frees up with time; tells the client when to come back."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(retry_after_s)}


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Orq-Signature`` value a sender computes (also what senders' docs and tests use)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(secret: str, headers: Any, body: bytes, now_s: float) -> str:
    """The hex signature if the request is signed with ``secret`` now; a 401 saying why otherwise."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not timestamp or not given:
        raise Unauthorized(f"this webhook needs a signature: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}",
                           reason="missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Unauthorized(f"{TIMESTAMP_HEADER}: Unix time in seconds", reason="bad_timestamp")
    if abs(now_s - int(timestamp)) > TOLERANCE_S:
        raise Unauthorized(f"{TIMESTAMP_HEADER} is more than {TOLERANCE_S} s away from now", reason="stale")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise Unauthorized("signature does not match", reason="bad_signature")
    return expected.removeprefix(SIGNATURE_PREFIX)


async def _live_webhook(ctx: ApiContext, token: str) -> TriggerState:
    trigger = await find_by_token(ctx.redis, ctx.settings.partitions, token)
    if trigger is None or not trigger.live or trigger.type != "webhook":
        raise NotFound(_NOT_FOUND)
    return trigger


async def _spend(ctx: ApiContext, key: str, limit: int, now: int, what: str) -> None:
    """One call from a fixed one-minute budget at ``key``; 429 (with ``Retry-After``) past ``limit``."""
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        used, _ = await pipe.execute()
    if int(used) > limit:
        retry = max(1, math.ceil(((now // 60_000 + 1) * 60_000 - now) / 1000))
        metrics.webhook_refused("rate_limited")
        raise TooManyRequests(f"more than {limit} {what} a minute to this webhook", retry_after_s=retry, limit=limit)


async def _within_rate(ctx: ApiContext, trigger: TriggerState, now: int) -> None:
    """The calls this trigger accepts (so per token)."""
    limit = int(trigger.config.get("rate_per_minute") or ctx.settings.hook_rate_per_minute)
    await _spend(ctx, keys.trigger_rate(trigger.partition, trigger.id, now // 60_000), limit, now, "calls")


async def _within_refused_rate(ctx: ApiContext, trigger: TriggerState, now: int) -> None:
    """The calls this signed trigger refuses, counted apart from the ones it accepts."""
    key = keys.trigger_refused_rate(trigger.partition, trigger.id, now // 60_000)
    await _spend(ctx, key, ctx.settings.hook_refused_per_minute, now, "refused calls")


async def _signature_claim(ctx: ApiContext, trigger: TriggerState, secret: str, request: Request, body: bytes,
                           now: int) -> Once:
    """The claim of a valid, unused signature; a refusal (401, or 429 past the refused budget) otherwise."""
    try:
        signature = verify(secret, request.headers, body, now / 1000)
        claim = keys.trigger_claim(trigger.partition, trigger.id, f"sig:{signature}")
        if await ctx.redis.exists(claim):  # a replay is refused before it can spend the sender's budget
            raise Unauthorized("this signature was already used", reason="replayed")
    except Unauthorized:
        await _within_refused_rate(ctx, trigger, now)  # past it, counted as rate_limited instead
        metrics.webhook_refused("unauthorized")
        raise
    # Kept past the tolerance window: a replay within it finds the claim, one after it is stale anyway.
    return Once(claim, 2 * TOLERANCE_S)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES)
    return body


def _decode(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        params = _object_decoder.decode(body)
    except msgspec.ValidationError:
        raise ValidationFailed("body: a JSON object (it becomes the run's params)", field="body") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    check_json_value(params, "body")
    return params


async def receive(request: Request) -> Response:
    ctx = context(request)
    trigger = await _live_webhook(ctx, request.path_params["token"])
    now = now_ms()
    secret = trigger.config.get("secret")
    if not secret:  # every call is one the trigger accepts: spend before reading the body
        await _within_rate(ctx, trigger, now)
    body = await _read_body(request)
    claims = []
    if secret:
        claims.append(await _signature_claim(ctx, trigger, str(secret), request, body, now))
        await _within_rate(ctx, trigger, now)
    params = _decode(body)
    firer = Firer(ctx.redis, ctx.committer, ctx.settings)
    fire = FireRequest(params=params, source={"webhook": True}, claims=claims, consume_on_skip=False)
    match await firer.fire(trigger.partition, trigger.id, fire, now):
        case Fired(execution_id=execution_id):
            metrics.trigger_fired(trigger.type)
            return responses.json(WebhookAccepted(execution_id=execution_id), 202)
        case Skipped(reason="quota", used=used, limit=limit):
            resets = month_end_ms(now)
            raise QuotaRefused(f"monthly quota of {limit} executions exceeded ({used} used)",
                               retry_after_s=max(1, math.ceil((resets - now) / 1000)), limit=limit, used=used,
                               requested=1, resets_at=iso(resets))
        case Skipped(reason="backlog_full"):
            raise TooManyRequests("too many executions already waiting for this tenant", retry_after_s=30)
        case Skipped(reason=reason):
            raise Conflict(f"the webhook could not start its workflow: {reason}", reason=reason)
        case NotFired(reason="claimed"):
            metrics.webhook_refused("unauthorized")
            raise Unauthorized("this signature was already used", reason="replayed")
        case NotFired(reason="gone"):
            raise NotFound(_NOT_FOUND)
        case _:
            raise Conflict("the trigger is being changed concurrently, try again")


routes = [Route("/api/triggers/webhook/{token}", receive, methods=["POST"])]
