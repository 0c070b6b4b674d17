"""Work queues: their settings in Redis (what commands check) and the units that create, change and delete them.

Queue hash ``orq:{p}:queue:<id>`` fields: ``tenant``, ``name``, ``deleted`` ("0"/"1"), ``revision`` (grows with
every change, so a command decided on one version is refused after another), ``unique`` ("0"/"1", what item
adds guard on) and ``snap`` (msgpack :class:`~shared.log.events.QueueSnapshot`, what the events carry).
``orq:{p}:qnames:<tenant>`` maps each live queue's casefolded name to its id: names are unique per tenant
regardless of case, and a deleted queue's name is free again.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import QueueCreated, QueueDeleted, QueueSnapshot, QueueUpdated
from shared.log.redis import text

NAME_TAKEN_GUARD = "queue_name_taken"
QUEUE_GONE_GUARD = "queue_deleted"
QUEUE_CHANGED_GUARD = "queue_changed"

_snap_decoder = msgspec.msgpack.Decoder(QueueSnapshot)
_encoder = msgspec.msgpack.Encoder()


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (our clients do not decode replies)."""
    return value if isinstance(value, bytes) else value.encode()


def name_key(name: str) -> str:
    """The form in which names are compared: "Invoices" and "invoices" are one name."""
    return name.casefold()


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as Redis holds it."""

    id: str
    tenant_id: str
    deleted: bool
    revision: int
    snapshot: QueueSnapshot

    @property
    def max_retries(self) -> int:
        return self.snapshot.max_retries

    @property
    def abandon_after_ms(self) -> int:
        return self.snapshot.abandon_after_minutes * 60_000

    @property
    def unique_reference(self) -> bool:
        return self.snapshot.unique_reference


async def read_queue(redis: Redis, p: int, queue_id: str) -> QueueState | None:
    raw = await redis.hmget(keys.queue(p, queue_id), ["tenant", "deleted", "revision", "snap"])
    tenant, deleted, revision, snap = raw
    if tenant is None or snap is None:
        return None
    return QueueState(
        id=queue_id,
        tenant_id=text(tenant),
        deleted=text(deleted) == "1",
        revision=int(text(revision) or 0),
        snapshot=_snap_decoder.decode(as_bytes(snap)),
    )


def _state_fields(snapshot: QueueSnapshot, revision: int) -> dict[str, str | int | bytes]:
    return {
        "name": snapshot.name,
        "revision": revision,
        "unique": "1" if snapshot.unique_reference else "0",
        "snap": _encoder.encode(snapshot),
    }


def create_unit(*, p: int, tenant_id: str, queue_id: str, snapshot: QueueSnapshot, now_ms: int) -> Unit:
    """A new queue; refused (``NAME_TAKEN_GUARD``) when the tenant has a live queue of that name."""
    queue_key = keys.queue(p, queue_id)
    names = keys.queue_names(p, tenant_id)
    unit = Unit(p).require(names, name_key(snapshot.name), [""], NAME_TAKEN_GUARD)
    unit.require_absent(queue_key, "queue_exists")
    unit.event(QueueCreated(tenant_id=tenant_id, aggregate_id=queue_id, ts=now_ms, queue=snapshot))
    unit.hset(queue_key, {"tenant": tenant_id, "deleted": "0", **_state_fields(snapshot, 1)})
    unit.hset(names, {name_key(snapshot.name): queue_id})
    return unit


def _current(unit: Unit, queue: QueueState, p: int) -> Unit:
    """Guards: the queue is live and still at the revision the command was decided on."""
    queue_key = keys.queue(p, queue.id)
    unit.require(queue_key, "deleted", ["0"], QUEUE_GONE_GUARD)
    return unit.require(queue_key, "revision", [str(queue.revision)], QUEUE_CHANGED_GUARD)


def update_unit(*, p: int, queue: QueueState, snapshot: QueueSnapshot, now_ms: int) -> Unit:
    """New settings (a rename frees the old name and takes the new one, atomically)."""
    unit = _current(Unit(p), queue, p)
    names = keys.queue_names(p, queue.tenant_id)
    old, new = name_key(queue.snapshot.name), name_key(snapshot.name)
    if old != new:
        unit.require(names, new, [""], NAME_TAKEN_GUARD)
    unit.event(QueueUpdated(tenant_id=queue.tenant_id, aggregate_id=queue.id, ts=now_ms, queue=snapshot))
    unit.hset(keys.queue(p, queue.id), _state_fields(snapshot, queue.revision + 1))
    if old != new:
        unit.hdel(names, old)
        unit.hset(names, {new: queue.id})
    return unit


def delete_unit(*, p: int, queue: QueueState, now_ms: int) -> Unit:
    """The queue goes (its name is free again); its waiting items can no longer be claimed."""
    snapshot = msgspec.structs.replace(queue.snapshot, updated_at=now_ms)
    unit = _current(Unit(p), queue, p)
    unit.event(QueueDeleted(tenant_id=queue.tenant_id, aggregate_id=queue.id, ts=now_ms, queue=snapshot))
    unit.hset(keys.queue(p, queue.id), {"deleted": "1", **_state_fields(snapshot, queue.revision + 1)})
    unit.hdel(keys.queue_names(p, queue.tenant_id), name_key(queue.snapshot.name))
    # The claim sets go with the queue: nothing can claim from it any more. Item hashes stay (their ids may
    # still be looked up); unique references are kept with the queue's hash for the same reason.
    unit.delete(keys.queue_ready(p, queue.id))
    unit.delete(keys.queue_deferred(p, queue.id))
    return unit
