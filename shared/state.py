"""Aggregate state in Redis: what commands check. A cache of the log, never read by queries.

Execution hash ``orq:{p}:exec:<id>`` fields (all strings):
``tenant``, ``workflow_id``, ``def_key`` (the pinned, immutable definition), ``priority``, ``status``,
``attempt`` (the attempt now running or next to run, from 1 in each attempt series), ``retry_count``,
``crash_count``, ``step`` (index to resume from), ``fence`` (the fencing token: moves on at every hand-out
to an executor and at every command that revokes one; every commit of a run checks it), ``owner`` (the
executor consumer it is handed out to; set exactly while it counts in the tenant's ``running``), ``seq`` (how
many lifecycle commits its runs have made: each requires the last value and moves it on, so a commit sent
again after its reply was lost applies once),
``queued_at``, ``started_at``, ``params`` (msgpack), ``out:<i>`` (msgpack output of step i),
``work_stream``/``work_id`` (its work entry, while it has one: dispatch writes them), ``retry_at`` (ms: when
the retry after a failed attempt is due, the time the ``due`` sorted set holds too; written with status
``retrying`` by ``shared/outcomes.py``, removed by the start commit of the next run, so a cancel or manual retry
in between leaves it behind until then), ``max_attempts`` (only when the run overrides its workflow's policy),
``dead_lettered`` ("1" once in the DLQ), ``dlq_id`` (its DLQ entry), ``trigger_type``; while parked (see
``shared/outcomes.py``): ``parked`` (``robot``, ``child`` or ``resume``), ``task`` (its robot task),
``waits_for``/``waiting_since`` (its child execution); a child execution: ``parent``, ``parent_step``, ``depth``.
Tenant hash ``orq:{p}:tenant:<id>``: ``name``, ``plan``, ``key_hash``, ``key_id``, ``created_at``, ``paused``.
Workflow hash ``orq:{p}:wf:<id>``: ``tenant``, ``name``, ``version``, ``deleted`` ("0"/"1"), ``paused`` ("0"/"1"),
``created_at``, ``updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared import keys
from shared.redis import text
from shared.workflows import WorkflowDef


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FENCE = "fence"
SEQ = "seq"

FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

_def_decoder = msgspec.msgpack.Decoder(WorkflowDef)
_encoder = msgspec.msgpack.Encoder()


def encode_definition(definition: WorkflowDef) -> bytes:
    return _encoder.encode(definition)


def decode_definition(body: bytes) -> WorkflowDef:
    return _def_decoder.decode(body)


@dataclass(frozen=True, slots=True)
class TenantState:
    id: str
    partition: int
    name: str
    plan: str
    key_hash: str
    paused: bool


@dataclass(frozen=True, slots=True)
class WorkflowState:
    id: str
    tenant_id: str
    name: str
    version: int
    deleted: bool


async def read_tenant(redis: Redis, partitions: int, tenant_id: str) -> TenantState | None:
    p = keys.partition_of(tenant_id, partitions)
    return tenant_from_hash(tenant_id, p, await redis.hgetall(keys.tenant(p, tenant_id)))


def tenant_from_hash(tenant_id: str, p: int, raw: Mapping[Any, Any]) -> TenantState | None:
    if not raw:
        return None
    h = {text(k): text(v) for k, v in raw.items()}
    return TenantState(tenant_id, p, h["name"], h["plan"], h["key_hash"], h.get("paused") == "1")


async def read_workflow(redis: Redis, p: int, workflow_id: str) -> WorkflowState | None:
    return workflow_from_hash(workflow_id, await redis.hgetall(keys.workflow(p, workflow_id)))


def workflow_from_hash(workflow_id: str, raw: Mapping[Any, Any]) -> WorkflowState | None:
    if not raw:
        return None
    h = {text(k): text(v) for k, v in raw.items()}
    return WorkflowState(workflow_id, h["tenant"], h["name"], int(h["version"]), h.get("deleted") == "1")


async def read_execution(redis: Redis, p: int, execution_id: str) -> dict[str, bytes]:
    """The raw execution hash (field name → bytes), empty if unknown."""
    raw = await redis.hgetall(keys.execution(p, execution_id))
    return {text(k): v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}
