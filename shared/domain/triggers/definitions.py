"""Triggers: their types and configs, their aggregate state in Redis, and the units that save or delete them.

Trigger hash ``orq:{p}:trigger:<id>`` fields (all strings): ``tenant``, ``workflow_id``, ``type``, ``config``
(JSON), ``enabled`` and ``deleted`` ("0"/"1"), ``rev`` (grows with every save and every firing: units guard
on it, so an edit and a firing never interleave), ``count`` (firings), ``last_fired_at`` (ms, "" before the
first), ``last_execution_id``, ``created_at``, ``updated_at``, ``cursor`` (schedules: the last tick handled),
``token_hash`` (webhook and email: SHA-256 of the token).

Indexes, changed in the same units: ``orq:{p}:triggers:<type>`` (id → tenant: what the trigger service
watches), ``orq:{p}:trigtoken:<sha256>`` (token → id: webhooks and mailboxes), ``orq:{p}:chains:<tenant>``
(id → watched workflow of ``workflow_completed`` triggers, plus ``rev`` so cycle checks cannot race).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from redis.asyncio import Redis

from shared.infra.errors import ValidationFailed
from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import TriggerDeleted, TriggerSaved, TriggerSnapshot
from shared.log.redis import text

TRIGGER_TYPES: tuple[str, ...] = ("schedule", "webhook", "email", "file_watcher", "queue_item",
                                  "workflow_completed", "api", "manual")
# What started an execution (its ``trigger_type``): a trigger of one of these types, or a parent execution's
# ``workflow`` step (shared/domain/executions/subworkflows.py).
EXECUTION_SOURCES: tuple[str, ...] = (*TRIGGER_TYPES, "workflow")
# Types the trigger service watches (the others fire through the API).
WATCHED_TYPES = ("schedule", "file_watcher", "email", "workflow_completed", "queue_item")
TOKEN_TYPES = frozenset({"webhook", "email"})

REV_GUARD = "trigger_changed"
CHAINS_GUARD = "chains_changed"
MAX_CONFIG_BYTES = 16 * 1024
TOKEN_BYTES = 20  # 160 bits; hex so it is also a valid, case-proof mailbox name (40 characters)
_TOKEN = re.compile(r"^[0-9a-f]{40}$")


class _Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Every type may add fixed ``params`` (what the firing supplies wins) and a ``priority``."""

    params: dict[str, Any] = {}
    priority: Annotated[int, Meta(ge=1, le=10)] | None = None


class ScheduleConfig(_Config, kw_only=True, frozen=True):
    cron: str
    timezone: str = "UTC"
    catch_up: Literal["one", "all", "none"] = "one"
    overlap: Literal["skip", "allow"] = "skip"


class WebhookConfig(_Config, kw_only=True, frozen=True):
    token: str = ""
    secret: Annotated[str, Meta(min_length=16, max_length=256)] | None = None
    rate_per_minute: Annotated[int, Meta(ge=1, le=60_000)] | None = None


class EmailConfig(_Config, kw_only=True, frozen=True):
    token: str = ""


class FileWatcherConfig(_Config, kw_only=True, frozen=True):
    folder: Annotated[str, Meta(min_length=1, max_length=1000)]
    glob: str = "*"
    move_to_processed: bool = False
    stable_ms: Annotated[int, Meta(ge=0, le=600_000)] = 1000
    include_existing: bool = False


class QueueItemConfig(_Config, kw_only=True, frozen=True):
    queue_id: Annotated[str, Meta(min_length=1, max_length=64)]
    max_concurrent: Annotated[int, Meta(ge=1, le=100)] = 1


class WorkflowCompletedConfig(_Config, kw_only=True, frozen=True):
    workflow_id: Annotated[str, Meta(min_length=1, max_length=64)]
    statuses: Annotated[list[Literal["completed", "failed", "cancelled"]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["completed"]
    )


class ManualConfig(_Config, kw_only=True, frozen=True):
    pass


Config = (ScheduleConfig | WebhookConfig | EmailConfig | FileWatcherConfig | QueueItemConfig
          | WorkflowCompletedConfig | ManualConfig)

CONFIG_TYPES: dict[str, type[Config]] = {
    "schedule": ScheduleConfig,
    "webhook": WebhookConfig,
    "email": EmailConfig,
    "file_watcher": FileWatcherConfig,
    "queue_item": QueueItemConfig,
    "workflow_completed": WorkflowCompletedConfig,
    "api": ManualConfig,
    "manual": ManualConfig,
}

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def decode_config(trigger_type: str, raw: dict[str, Any]) -> Config:
    """``raw`` as the config of ``trigger_type``; a 422 naming the field (``config.cron``) otherwise."""
    try:
        return msgspec.convert(raw, CONFIG_TYPES[trigger_type])
    except msgspec.ValidationError as exc:
        detail, path = str(exc), ""
        if (m := _AT.search(detail)) is not None:
            path, detail = m.group("path").lstrip("."), detail[: m.start()]
        if (m := _FIELD.match(detail)) is not None:
            path = f"{path}.{m.group('name')}" if path else m.group("name")
        name = f"config.{path}" if path else "config"
        raise ValidationFailed(f"{name}: {detail}", field=name) from None


def encode_config(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(config)
    return out


def check_glob(pattern: str, field: str = "config.glob") -> None:
    """A file name pattern (``*.csv``, ``invoice-??.pdf``, ``[!.]*``): no folders, brackets closed."""
    if not pattern or len(pattern) > 200 or any(c in pattern for c in "/\\\0") or not pattern.isprintable():
        raise ValidationFailed(f"{field}: a file name pattern of 1 to 200 characters, without '/'", field=field)
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            close = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if close < 0:
                raise ValidationFailed(f"{field}: '[' at {i} is never closed", field=field)
            i = close
        i += 1


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    return _TOKEN.match(token) is not None


# --- state ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One trigger as its Redis hash holds it."""

    id: str
    partition: int
    tenant_id: str
    workflow_id: str
    type: str
    config: dict[str, Any]
    enabled: bool
    deleted: bool
    rev: int
    count: int
    last_fired_at: int | None
    last_execution_id: str
    created_at: int
    updated_at: int
    cursor: int

    def snapshot(self, **changes: Any) -> TriggerSnapshot:
        fields: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "trigger_type": self.type,
            "config": self.config,
            "enabled": self.enabled,
            "revision": self.rev,
            "trigger_count": self.count,
            "last_triggered_at": self.last_fired_at,
            "created_at": self.created_at,
        }
        fields.update(changes)
        return TriggerSnapshot(**fields)

    @property
    def live(self) -> bool:
        """Enabled and not deleted: the only triggers that ever fire."""
        return self.enabled and not self.deleted


_config_decoder = msgspec.json.Decoder(dict[str, Any])
_json = msgspec.json.Encoder()


def _state(trigger_id: str, p: int, h: dict[str, str]) -> TriggerState:
    return TriggerState(
        id=trigger_id,
        partition=p,
        tenant_id=h["tenant"],
        workflow_id=h["workflow_id"],
        type=h["type"],
        config=_config_decoder.decode(h.get("config") or "{}"),
        enabled=h.get("enabled") == "1",
        deleted=h.get("deleted") == "1",
        rev=int(h.get("rev") or 0),
        count=int(h.get("count") or 0),
        last_fired_at=int(h["last_fired_at"]) if h.get("last_fired_at") else None,
        last_execution_id=h.get("last_execution_id", ""),
        created_at=int(h.get("created_at") or 0),
        updated_at=int(h.get("updated_at") or 0),
        cursor=int(h.get("cursor") or 0),
    )


async def read_trigger(redis: Redis, p: int, trigger_id: str) -> TriggerState | None:
    raw = await redis.hgetall(keys.trigger(p, trigger_id))
    if not raw or b"tenant" not in raw:
        return None
    return _state(trigger_id, p, {text(k): text(v) for k, v in raw.items()})


async def read_triggers(redis: Redis, p: int, trigger_ids: list[str]) -> list[TriggerState]:
    """The triggers of ``trigger_ids`` that exist (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for trigger_id in trigger_ids:
            pipe.hgetall(keys.trigger(p, trigger_id))
        replies = await pipe.execute()
    out = []
    for trigger_id, raw in zip(trigger_ids, replies, strict=True):
        if raw and b"tenant" in raw:
            out.append(_state(trigger_id, p, {text(k): text(v) for k, v in raw.items()}))
    return out


async def find_by_token(redis: Redis, partitions: int, token: str) -> TriggerState | None:
    """The trigger whose webhook or mailbox token this is (every partition is asked, in one round trip)."""
    if not looks_like_token(token):
        return None
    digest = token_hash(token)
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.get(keys.trigger_token(p, digest))
        replies = await pipe.execute()
    for p, trigger_id in enumerate(replies):
        if trigger_id:
            state = await read_trigger(redis, p, text(trigger_id))
            if state is not None and state.type in TOKEN_TYPES and state.config.get("token") == token:
                return state
    return None


Edge = tuple[str, str]  # (watched workflow, started workflow)


async def chain_edges(redis: Redis, p: int, tenant_id: str) -> tuple[str, dict[str, Edge]]:
    """The ``rev`` of a tenant's chain index and its edges: trigger id → (watched, started) workflow ids."""
    raw = {text(k): text(v) for k, v in (await redis.hgetall(keys.trigger_chains(p, tenant_id))).items()}
    rev = raw.pop("rev", "")
    edges: dict[str, Edge] = {}
    for trigger_id, value in raw.items():
        source, _, target = value.partition(">")
        edges[trigger_id] = (source, target)
    return rev, edges


# --- units ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Draft:
    """A trigger as a save would leave it."""

    tenant_id: str
    workflow_id: str
    type: str
    config: dict[str, Any]
    enabled: bool


def save_unit(
    p: int, trigger_id: str, draft: Draft, previous: TriggerState | None, now_ms: int, chains_rev: str | None = None
) -> Unit:
    """Create (``previous`` None) or replace a trigger; ``chains_rev`` guards the cycle check it passed."""
    key = keys.trigger(p, trigger_id)
    unit = Unit(p)
    if previous is None:
        unit.require_absent(key, "trigger_exists")
    else:
        unit.require(key, "rev", [str(previous.rev)], REV_GUARD)
        unit.require(key, "deleted", ["0"], REV_GUARD)
    rev = previous.rev + 1 if previous else 1
    created = previous.created_at if previous else now_ms
    snapshot = TriggerSnapshot(
        workflow_id=draft.workflow_id,
        trigger_type=draft.type,
        config=draft.config,
        enabled=draft.enabled,
        revision=rev,
        trigger_count=previous.count if previous else 0,
        last_triggered_at=previous.last_fired_at if previous else None,
        created_at=created,
    )
    unit.event(TriggerSaved(tenant_id=draft.tenant_id, aggregate_id=trigger_id, ts=now_ms, trigger=snapshot))
    fields: dict[str, str | int | bytes] = {
        "tenant": draft.tenant_id,
        "workflow_id": draft.workflow_id,
        "type": draft.type,
        "config": _json.encode(draft.config),
        "enabled": "1" if draft.enabled else "0",
        "deleted": "0",
        "rev": rev,
        "created_at": created,
        "updated_at": now_ms,
        # A schedule counts from its last save: ticks while it was disabled or differently set never fire.
        "cursor": now_ms,
    }
    if previous is None:
        fields |= {"count": 0, "last_fired_at": "", "last_execution_id": ""}
    token = str(draft.config.get("token", ""))
    if draft.type in TOKEN_TYPES:
        fields["token_hash"] = token_hash(token)
        unit.set(keys.trigger_token(p, token_hash(token)), trigger_id)
    unit.hset(key, fields)
    _unindex(unit, p, trigger_id, draft.tenant_id, previous, keep_token=token)
    if draft.type in WATCHED_TYPES:
        unit.hset(keys.triggers_of_type(p, draft.type), {trigger_id: draft.tenant_id})
    if draft.type == "workflow_completed":
        chains = keys.trigger_chains(p, draft.tenant_id)
        if chains_rev is not None:
            unit.require(chains, "rev", [chains_rev], CHAINS_GUARD)
        unit.hset(chains, {trigger_id: f"{draft.config['workflow_id']}>{draft.workflow_id}"})
        unit.hincrby(chains, "rev", 1)
    return unit


def _unindex(unit: Unit, p: int, trigger_id: str, tenant_id: str, previous: TriggerState | None,
             keep_token: str = "") -> None:
    """Take a trigger's previous entries out of the indexes (all but the token it keeps)."""
    if previous is None:
        return
    unit.hdel(keys.triggers_of_type(p, previous.type), trigger_id)
    old_token = str(previous.config.get("token", ""))
    if previous.type in TOKEN_TYPES and old_token and old_token != keep_token:
        unit.delete(keys.trigger_token(p, token_hash(old_token)))
    if previous.type == "workflow_completed":
        unit.hdel(keys.trigger_chains(p, tenant_id), trigger_id)


def delete_unit(p: int, previous: TriggerState, now_ms: int) -> Unit:
    """Delete a trigger: it never fires again (every firing guards ``deleted``)."""
    key = keys.trigger(p, previous.id)
    unit = Unit(p).require(key, "rev", [str(previous.rev)], REV_GUARD).require(key, "deleted", ["0"], REV_GUARD)
    rev = previous.rev + 1
    unit.event(TriggerDeleted(tenant_id=previous.tenant_id, aggregate_id=previous.id, ts=now_ms,
                              trigger=previous.snapshot(revision=rev)))
    unit.hset(key, {"deleted": "1", "rev": rev, "updated_at": now_ms})
    _unindex(unit, p, previous.id, previous.tenant_id, previous)
    return unit


def find_cycle(edges: dict[str, Edge], source: str, target: str) -> list[str] | None:
    """The workflows of the cycle that a new edge ``source → target`` would close (``[A, B, A]``), else None."""
    graph: dict[str, set[str]] = {}
    for src, tgt in edges.values():
        graph.setdefault(src, set()).add(tgt)
    # A path target → … → source already there means source → target closes a cycle.
    path = {target: [target]}
    frontier = [target]
    while frontier:
        node = frontier.pop()
        if node == source:
            return [source, *path[node]]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in path:
                path[nxt] = [*path[node], nxt]
                frontier.append(nxt)
    return None
