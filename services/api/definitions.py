"""From a workflow request body to a validated :class:`shared.log.workflows.WorkflowDef`.

Shape and bounds are checked by the request Structs; this adds what needs the action catalogue: every
step's action exists and its params fit that action's schema (templates allowed where a value is only known
at run time), and free-form values can be stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from services.api.bodies import check_json_value
from services.api.schemas import NotifyIn, RetryIn, WorkflowIn
from shared.domain.actions.schemas import validate_step
from shared.infra.errors import ValidationFailed
from shared.infra.ssrf import check_url
from shared.log.workflows import Backoff, NotifyDef, RetryPolicy, StepDef, WorkflowDef

_PARAM = re.compile(r"Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def build_definition(body: WorkflowIn, action_types: Mapping[str, type[msgspec.Struct]], *,
                     allow_private: bool = False) -> WorkflowDef:
    """``allow_private`` (``ORQ_ALLOW_PRIVATE_NETWORKS``): literal ``http_request`` URLs may name private hosts."""
    steps = [
        StepDef(action=s.action, label=s.label, params=s.params, timeout_s=s.timeout_s, on_error=s.on_error,
                runs_on=s.runs_on)
        for s in body.steps
    ]
    for index, step in enumerate(steps):
        check_json_value(step.params, f"steps[{index}].params")
        try:
            validate_step(index, step, action_types, allow_private=allow_private)
        except ValidationFailed as exc:
            raise _naming_the_param(exc) from None
    return WorkflowDef(
        name=body.name,
        steps=steps,
        retry=_retry(body.retry or RetryIn()),
        retry_from=body.retry_from,
        description=body.description,
        notify=_notify(body.notify),
    )


def _notify(entries: list[NotifyIn]) -> list[NotifyDef]:
    """Exactly one channel per entry, a secret only for webhooks, http(s) URLs without credentials.

    Where a webhook's host points is checked when it is called (it may resolve differently by then)."""
    out = []
    for index, entry in enumerate(entries):
        where = f"notify[{index}]"
        if (entry.webhook is None) == (entry.email is None):
            raise ValidationFailed(f"{where}: give exactly one of `webhook` or `email`", field=where)
        if entry.webhook is not None:
            check_url(entry.webhook, f"{where}.webhook")
        elif entry.secret is not None:
            raise ValidationFailed(f"{where}.secret: only webhooks are signed", field=f"{where}.secret")
        out.append(NotifyDef(on=sorted(set(entry.on)), webhook=entry.webhook, secret=entry.secret,
                             email=entry.email))
    return out


def _naming_the_param(exc: ValidationFailed) -> ValidationFailed:
    """A missing or unknown param is reported at ``params``: name the param itself."""
    where = exc.details.get("field")
    found = _PARAM.search(exc.message)
    if not isinstance(where, str) or found is None or where.endswith(f".{found.group('name')}"):
        return exc
    field = f"{where}.{found.group('name')}"
    return ValidationFailed(f"{field}: {exc.message.split(': ', 1)[-1]}", **{**exc.details, "field": field})


def _retry(retry: RetryIn) -> RetryPolicy:
    return RetryPolicy(
        attempts=retry.attempts, backoff=Backoff(type=retry.backoff.type, delay_ms=retry.backoff.delay_ms)
    )
