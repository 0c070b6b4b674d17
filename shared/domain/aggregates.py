"""Aggregate state in Redis: what commands check. A cache of the log, never read by queries.

The execution aggregate has its own module (shared/domain/executions/state.py: its typed state, the fold that changes
it and its hash). Here: the execution statuses, and the tenant and workflow aggregates.

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

from shared.log import keys
from shared.log.redis import text
from shared.log.workflows import WorkflowDef


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
