"""Step parameter templates: ``{{ params.x }}`` and ``{{ steps.N.output.y }}``. Lookup only, no evaluation.

A string that is exactly one placeholder becomes the referenced value with its type; placeholders inside a
longer string are rendered as text (JSON for objects). An unknown reference is an error, not an empty value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from shared.infra.errors import StepFailed

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
_json = msgspec.json.Encoder()


def has_template(value: Any) -> bool:
    return isinstance(value, str) and PLACEHOLDER.search(value) is not None


def valid_reference(path: str) -> bool:
    parts = path.split(".")
    if parts[0] == "params":
        return len(parts) >= 1
    return parts[0] == "steps" and len(parts) >= 3 and parts[1].isdigit() and parts[2] == "output"


def references(value: Any) -> list[str]:
    """Every placeholder path inside a (nested) value."""
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def render(value: Any, params: Mapping[str, Any], outputs: Mapping[int, Any]) -> Any:
    """Resolve placeholders in a (nested) value against the run's params and earlier steps' outputs."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return _lookup(whole.group(1), params, outputs)
        if "{{" not in value:
            return value
        return PLACEHOLDER.sub(lambda m: _as_text(_lookup(m.group(1), params, outputs)), value)
    if isinstance(value, Mapping):
        return {k: render(v, params, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, params, outputs) for v in value]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _lookup(path: str, params: Mapping[str, Any], outputs: Mapping[int, Any]) -> Any:
    parts = path.split(".")
    if parts[0] == "params":
        current: Any = params
        rest = parts[1:]
    elif parts[0] == "steps" and len(parts) >= 3 and parts[1].isdigit() and parts[2] == "output":
        index = int(parts[1])
        if index not in outputs:
            raise StepFailed(f"template {{{{ {path} }}}}: step {index} has no output")
        current = outputs[index]
        rest = parts[3:]
    else:
        raise StepFailed(f"template {{{{ {path} }}}}: only params.* and steps.N.output.* can be referenced")
    for part in rest:
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise StepFailed(f"template {{{{ {path} }}}}: {part!r} not found")
    return current
