"""Rendering: projection rows and definitions to response bodies (times as ISO 8601, UTC)."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Row

from services.api.schemas import DlqEntry, Execution, ExecutionStep, ExecutionSummary, Workflow
from shared.infra.clock import iso
from shared.log.workflows import WorkflowDef

SECRET_MASK = "********"  # a notification secret is write-only: replies show that one is set, not its value


def workflow(
    workflow_id: str, version: int, definition: WorkflowDef, created_at: int | None, updated_at: int | None
) -> Workflow:
    return Workflow(
        id=workflow_id,
        name=definition.name,
        version=version,
        steps=definition.steps,
        retry=definition.retry,
        retry_from=definition.retry_from,
        description=definition.description,
        notify=[msgspec.structs.replace(n, secret=SECRET_MASK) if n.secret else n for n in definition.notify],
        created_at=iso(created_at),
        updated_at=iso(updated_at),
    )


def workflow_row(row: Row[Any]) -> Workflow:
    m = row._mapping
    definition = msgspec.convert(m["definition"], WorkflowDef)
    return workflow(m["id"], m["version"], definition, m["created_at"], m["updated_at"])


def _summary_fields(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "workflow_id": m["workflow_id"],
        "status": m["status"],
        "priority": m["priority"],
        "retry_count": m["retry_count"] or 0,
        "trigger_type": m["trigger_type"],
        "steps_total": m["steps_total"],
        "steps_completed": m["steps_completed"] or 0,
        "steps_failed": m["steps_failed"] or 0,
        "queued_at": iso(m["queued_at"]),
        "started_at": iso(m["started_at"]),
        "completed_at": iso(m["completed_at"]),
        "duration_ms": m["duration_ms"],
        "result": m["result"],
        "error_message": m["error_message"],
        "dead_lettered": bool(m["dead_lettered"]),
        "crash_count": m["crash_count"] or 0,
        "attempt": m["attempt"] or 1,
        "progress": m["progress"] or 0,
    }


def execution_summary(row: Row[Any]) -> ExecutionSummary:
    return ExecutionSummary(**_summary_fields(row))


def execution(row: Row[Any], steps: list[Row[Any]]) -> Execution:
    return Execution(**_summary_fields(row), steps=[execution_step(s) for s in steps])


def execution_step(row: Row[Any]) -> ExecutionStep:
    m = row._mapping
    return ExecutionStep(
        step_index=m["step_index"],
        action=m["action"],
        label=m["label"],
        status=m["status"],
        started_at=iso(m["started_at"]),
        completed_at=iso(m["completed_at"]),
        duration_ms=m["duration_ms"],
        output_data=m["output_data"],
        error_message=m["error_message"],
        worker_id=m.get("worker_id"),
        child_execution_id=m.get("child_execution_id"),
    )


def dlq_entry(row: Row[Any]) -> DlqEntry:
    return DlqEntry(**_summary_fields(row), dead_lettered_at=iso(row._mapping["dead_lettered_at"]))
