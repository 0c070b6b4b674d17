"""Step actions: their parameter schemas (the API validates with them) and the plug-in contract.

Built-ins are listed here with their parameter types; the executor implements them. More actions plug in
through the entry-point group ``orq.actions``: each entry point loads an object with a ``params``
attribute (a ``msgspec.Struct`` type) and an async ``run(params, ctx)`` returning the step's output.

Params are checked twice with the same code: when a workflow is saved (:func:`validate_step`, where a
template stands in for a value of the field's type) and when a step runs, after its templates are rendered
(:func:`parse_params`), so a template cannot carry a value the save-time check would have refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

import msgspec

from shared.domain.executions.templates import has_template, references, valid_reference
from shared.infra.errors import ValidationFailed
from shared.infra.ssrf import check_literal, check_url
from shared.log.workflows import StepDef

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "orq.actions"


class NoopParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class LogParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"


class DelayParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ms: int = msgspec.field(default=0)


class SetParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    values: dict[str, Any]


class HttpRequestParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    headers: dict[str, str] = {}
    json: Any = None
    timeout_s: float = 30.0


class FailParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: str = "step failed on purpose"
    until_attempt: int | None = None


class WorkflowParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Start a child execution of another workflow of the tenant (shared/domain/executions/subworkflows.py); with
    ``wait`` the step ends with the child: its ``result``, or its error."""

    workflow_id: str
    params: dict[str, Any] = {}
    wait: bool = True


BUILTIN_PARAMS: dict[str, type[msgspec.Struct]] = {
    "noop": NoopParams,
    "log": LogParams,
    "delay": DelayParams,
    "set": SetParams,
    "http_request": HttpRequestParams,
    "fail": FailParams,
    "workflow": WorkflowParams,
}
# The longest a ``delay`` step may sleep (1 h): longer waits belong to a schedule trigger, not an executor slot.
MAX_DELAY_MS = 3_600_000


class ActionContext(Protocol):
    """What a running action may know and report."""

    execution_id: str
    tenant_id: str
    step_index: int
    attempt: int

    async def log(self, message: str, level: str = "info") -> None: ...

    async def progress(self, percent: float, message: str | None = None) -> None: ...


class PluginAction(Protocol):
    params: type[msgspec.Struct]

    async def run(self, params: Any, ctx: ActionContext) -> Any: ...


def load_plugins() -> dict[str, PluginAction]:
    """Actions installed through the ``orq.actions`` entry points (a broken plug-in is logged, not fatal)."""
    found: dict[str, PluginAction] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception:
            log.exception("cannot load action plug-in %s", ep.name)
    return found


def param_types(plugins: Mapping[str, PluginAction]) -> dict[str, type[msgspec.Struct]]:
    return {**BUILTIN_PARAMS, **{name: p.params for name, p in plugins.items()}}


_PLACEHOLDER_BY_TYPE: dict[Any, Any] = {int: 0, float: 0.0, str: "", bool: False}


def _stand_in(field_type: Any) -> Any:
    """A value of the field's type standing for a template (whose real value is known only at run time)."""
    for candidate, value in _PLACEHOLDER_BY_TYPE.items():
        if field_type is candidate:
            return value
    origin = getattr(field_type, "__origin__", None)
    if origin is dict:
        return {}
    if origin is list:
        return []
    return None


def validate_step(
    index: int, step: StepDef, types: Mapping[str, type[msgspec.Struct]], *, allow_private: bool = False
) -> Any:
    """Check a step's action exists and its params fit; raise ``ValidationFailed`` naming the field.

    ``allow_private`` (``ORQ_ALLOW_PRIVATE_NETWORKS``) lets a literal ``http_request`` URL name a loopback,
    private or link-local address; a templated URL is checked when the step runs."""
    where = f"steps[{index}]"
    params_type = types.get(step.action)
    if step.runs_on is not None and step.action == "workflow":
        raise ValidationFailed(f"{where}.runs_on: a `workflow` step starts a child execution, it cannot run on a "
                               "robot", field=f"{where}.runs_on")
    if params_type is None and step.runs_on is not None:
        # An action the robots bring (a plug-in installed where they run): the robot checks its params.
        _check_references(where, index, step)
        return None
    if params_type is None:
        raise ValidationFailed(
            f"{where}.action: unknown action {step.action!r}", field=f"{where}.action", known=sorted(types)
        )
    _check_references(where, index, step)
    fields = {f.name: f.type for f in msgspec.structs.fields(params_type)}
    checked = {
        k: (_stand_in(fields[k]) if k in fields and has_template(v) and fields[k] is not str else v)
        for k, v in step.params.items()
    }
    parsed = parse_params(params_type, checked, f"{where}.params")
    if isinstance(parsed, HttpRequestParams) and not has_template(parsed.url):
        field = f"{where}.params.url"
        check_literal(check_url(parsed.url, field, allow_credentials=True), field, allow_private=allow_private)
    return parsed


def _check_references(where: str, index: int, step: StepDef) -> None:
    for ref in references(step.params):
        if not valid_reference(ref):
            raise ValidationFailed(f"{where}.params: bad template reference {{{{ {ref} }}}}", field=f"{where}.params")
        if ref.startswith("steps.") and int(ref.split(".")[1]) >= index:
            raise ValidationFailed(
                f"{where}.params: {{{{ {ref} }}}} refers to a step that has not run yet", field=f"{where}.params"
            )


def parse_params(params_type: type[msgspec.Struct], params: Mapping[str, Any], where: str = "params") -> Any:
    """``params`` as ``params_type``, within the bounds a type cannot say; ``ValidationFailed`` naming the field.

    The one check of step params, at save time (templates replaced by stand-ins) and at run time (rendered)."""
    try:
        parsed = msgspec.convert(params, params_type)
    except msgspec.ValidationError as exc:
        detail = str(exc)
        path = detail.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in detail else ""
        field_name = f"{where}.{path}" if path else where
        raise ValidationFailed(f"{field_name}: {detail}", field=field_name) from None
    if isinstance(parsed, DelayParams) and not 0 <= parsed.ms <= MAX_DELAY_MS:
        raise ValidationFailed(f"{where}.ms: {parsed.ms} is not between 0 and {MAX_DELAY_MS} (the longest delay, 1 h)",
                               field=f"{where}.ms", limit=MAX_DELAY_MS)
    return parsed
