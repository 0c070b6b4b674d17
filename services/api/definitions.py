"""From a workflow request body to a validated :class:`shared.workflows.WorkflowDef`.

Shape and bounds are checked by the request Structs; this adds what needs the action catalogue: every
step's action exists and its params fit that action's schema (templates allowed where a value is only known
at run time), and free-form values can be stored.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from services.api.bodies import check_json_value
from services.api.schemas import RetryIn, WorkflowIn
from shared.actions import validate_step
from shared.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef


def build_definition(body: WorkflowIn, action_types: Mapping[str, type[msgspec.Struct]]) -> WorkflowDef:
    steps = [
        StepDef(action=s.action, label=s.label, params=s.params, timeout_s=s.timeout_s, on_error=s.on_error)
        for s in body.steps
    ]
    for index, step in enumerate(steps):
        check_json_value(step.params, f"steps[{index}].params")
        validate_step(index, step, action_types)
    return WorkflowDef(
        name=body.name,
        steps=steps,
        retry=_retry(body.retry or RetryIn()),
        retry_from=body.retry_from,
        description=body.description,
    )


def _retry(retry: RetryIn) -> RetryPolicy:
    return RetryPolicy(
        attempts=retry.attempts, backoff=Backoff(type=retry.backoff.type, delay_ms=retry.backoff.delay_ms)
    )
