"""Queue items in Redis: their state, their claim order, and the unit that adds them (one or 10,000 at once).

Item hash ``orq:{p}:qitem:<id>`` fields: ``tenant``, ``queue_id``, ``status``, ``snap`` (msgpack
:class:`~shared.log.events.QueueItemSnapshot`: what the next event carries), ``data`` (the item's data as JSON;
dropped once the item is finished), ``rank`` (its member in the claim sets), ``started_at`` while in progress.

Claim order is a **rank**, a fixed-width string that sorts as the product wants: items with a deadline first,
earliest first; then by priority (1 first); then oldest; then by position in a bulk. A claimable item's rank
sits in ``qready:<queue>`` (every score 0, so the set is in rank order and its first member is next); an item
deferred into the future sits in ``qdeferred:<queue>`` scored by ``defer_until`` and moves to the ready set
when a claim finds it due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.domain.queues.definitions import QUEUE_CHANGED_GUARD, QUEUE_GONE_GUARD, QueueState, as_bytes
from shared.log import keys
from shared.log.commit import Unit, Value
from shared.log.events import QueueItemAdded, QueueItemSnapshot
from shared.log.redis import text

NO_DEADLINE = 9_999_999_999_999  # ms, year 2286: sorts after every real deadline
MAX_TIME_MS = NO_DEADLINE - 1
DUPLICATE_REFERENCE_GUARD = "duplicate_reference"  # refused labels are "duplicate_reference:<index>"

_snap_decoder = msgspec.msgpack.Decoder(QueueItemSnapshot)
_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_json_object = msgspec.json.Decoder(dict[str, Any])


def rank(item_id: str, *, priority: int, deadline: int | None, created_at: int, seq: int = 0) -> str:
    """The item's place in claim order (see the module docstring); it ends with ``:<item id>``."""
    return f"{deadline if deadline is not None else NO_DEADLINE:013d}{priority:02d}{created_at:013d}{seq:05d}:{item_id}"


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to add: what a client sent, validated."""

    id: str
    data: dict[str, Any]
    priority: int = 5
    reference: str | None = None
    deadline: int | None = None
    defer_until: int | None = None


@dataclass(frozen=True, slots=True)
class ItemState:
    """An item as Redis holds it."""

    id: str
    tenant_id: str
    status: str
    snapshot: QueueItemSnapshot
    data_json: bytes = b"{}"
    rank: str = ""

    @property
    def queue_id(self) -> str:
        return self.snapshot.queue_id

    def data(self) -> dict[str, Any]:
        return _json_object.decode(self.data_json)


_FIELDS = ["tenant", "status", "snap", "data", "rank"]


def _state(item_id: str, raw: Sequence[bytes | str | None]) -> ItemState | None:
    tenant, status, snap, data, item_rank = raw
    if tenant is None or snap is None:
        return None
    return ItemState(item_id, text(tenant), text(status), _snap_decoder.decode(as_bytes(snap)),
                     as_bytes(data) if data else b"{}", text(item_rank))


async def read_item(redis: Redis, p: int, item_id: str) -> ItemState | None:
    return _state(item_id, await redis.hmget(keys.queue_item(p, item_id), _FIELDS))


async def read_items(redis: Redis, p: int, item_ids: Sequence[str]) -> list[ItemState | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for item_id in item_ids:
            pipe.hmget(keys.queue_item(p, item_id), _FIELDS)
        replies = await pipe.execute()
    return [_state(i, r) for i, r in zip(item_ids, replies, strict=True)]


def encode_snapshot(snapshot: QueueItemSnapshot) -> bytes:
    return _encoder.encode(snapshot)


ADDED = str(QueueItemAdded.__struct_config__.tag)
# (id, event body, snapshot, data JSON, rank, defer_until or 0, reference or ""): one item for :func:`queue_add`.
Added = tuple[str, bytes, bytes, bytes, str, int, str]


def added(
    *,
    tenant_id: str,
    item_id: str,
    snapshot: QueueItemSnapshot,
    data: dict[str, Any],
    now_ms: int,
    seq: int = 0,
    data_json: bytes | None = None,
) -> Added:
    """What :func:`put_items` needs for one item: its ``queue_item.added`` event, state and rank."""
    event = QueueItemAdded(tenant_id=tenant_id, aggregate_id=item_id, ts=now_ms, item=snapshot, data=data)
    item_rank = rank(item_id, priority=snapshot.priority, deadline=snapshot.deadline, created_at=snapshot.created_at,
                     seq=seq)
    return (item_id, _encoder.encode(event), encode_snapshot(snapshot),
            data_json if data_json is not None else _json.encode(data), item_rank, snapshot.defer_until or 0,
            snapshot.reference or "")


def queue_add(
    unit: Unit, *, event_type: str, ready: str, deferred: str, refs: str, item_prefix: str, tenant_id: str,
    queue_id: str, now_ms: int, items: Sequence[Added],
) -> Unit:
    """Add work-queue items in one ``qadd`` op (``lua/commit_ops_queues.lua`` beside this module): per item (id,
    event body, snapshot, data JSON, rank, defer_until or 0, reference or ""). Each item's event is logged in order."""
    args: list[Value] = [keys.log(unit.p), event_type, ready, deferred, refs, item_prefix, tenant_id, queue_id,
                         now_ms]
    for item in items:
        args += item
    return unit.op("qadd", *args)


def put_items(unit: Unit, *, tenant_id: str, queue_id: str, items: Sequence[Added], now_ms: int) -> Unit:
    """Append each item's ``queue_item.added`` and make it claimable (now, or once its ``defer_until`` passes);
    its reference is remembered (the first item with a reference keeps it)."""
    p = unit.p
    return queue_add(
        unit,
        event_type=ADDED,
        ready=keys.queue_ready(p, queue_id),
        deferred=keys.queue_deferred(p, queue_id),
        refs=keys.queue_refs(p, queue_id),
        item_prefix=keys.queue_item(p, ""),
        tenant_id=tenant_id,
        queue_id=queue_id,
        now_ms=now_ms,
        items=items,
    )


def add_unit(*, p: int, tenant_id: str, queue: QueueState, items: Sequence[NewItem], now_ms: int) -> Unit:
    """Add ``items`` (all or none). With ``unique_reference``, each reference must be new to the queue: a
    refusal's label is ``duplicate_reference:<index>`` and its ``actual`` the item that holds it."""
    queue_key = keys.queue(p, queue.id)
    unit = Unit(p).require(queue_key, "deleted", ["0"], QUEUE_GONE_GUARD)
    # A concurrent PUT may switch unique_reference on: this unit was decided on the old setting.
    unit.require(queue_key, "unique", ["1" if queue.unique_reference else "0"], QUEUE_CHANGED_GUARD)
    refs = keys.queue_refs(p, queue.id)
    if queue.unique_reference:
        for index, item in enumerate(items):
            if item.reference is not None:
                unit.require(refs, item.reference, [""], f"{DUPLICATE_REFERENCE_GUARD}:{index}")
    rows = [
        added(tenant_id=tenant_id, item_id=item.id, snapshot=new_snapshot(queue.id, item, now_ms), data=item.data,
              now_ms=now_ms, seq=seq)
        for seq, item in enumerate(items)
    ]
    return put_items(unit, tenant_id=tenant_id, queue_id=queue.id, items=rows, now_ms=now_ms)


def new_snapshot(queue_id: str, item: NewItem, now_ms: int) -> QueueItemSnapshot:
    """A new item's state, added at ``now_ms`` (where its SLA starts)."""
    return QueueItemSnapshot(
        queue_id=queue_id,
        status="new",
        priority=item.priority,
        reference=item.reference,
        deadline=item.deadline,
        defer_until=item.defer_until,
        origin_at=now_ms,
        created_at=now_ms,
    )
