"""From a workflow request body to a validated :class:`shared.workflows.WorkflowDef`.

Shape and bounds are checked by the request Structs; this adds what needs the action catalogue: every
step's action exists and its params fit that action's schema (templates allowed where a value is only known
at run time), and free-form values can be stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from services.api.bodies import check_json_value
from services.api.schemas import RetryIn, WorkflowIn
from shared.actions import validate_step
from shared.errors import ValidationFailed
from shared.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef

_PARAM = re.compile(r"Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def build_definition(body: WorkflowIn, action_types: Mapping[str, type[msgspec.Struct]]) -> WorkflowDef:
    steps = [
        StepDef(action=s.action, label=s.label, params=s.params, timeout_s=s.timeout_s, on_error=s.on_error)
        for s in body.steps
    ]
    for index, step in enumerate(steps):
        check_json_value(step.params, f"steps[{index}].params")
        try:
            validate_step(index, step, action_types)
        except ValidationFailed as exc:
            raise _naming_the_param(exc) from None
    return WorkflowDef(
        name=body.name,
        steps=steps,
        retry=_retry(body.retry or RetryIn()),
        retry_from=body.retry_from,
        description=body.description,
    )


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
