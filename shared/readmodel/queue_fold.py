"""The fold of work-queue events into ``work_queues``, ``queue_items``, ``queue_item_data`` and their history.

Called by :class:`shared.readmodel.projection.Projection` for the events in :data:`QUEUE_EVENTS`. Every queue and item
event carries its aggregate's whole state after it, so each row is a function of one event: nothing is read
(the projector never loads these tables), re-applying an event writes the same row, and folding a log in one
batch or in many gives the same rows. ``queue_item_data`` is written by ``queue_item.added`` only (the data
never changes and only that event carries it); ``queue_item_history`` gets one row per item event that has a
stream id (a status change, or a progress note), keyed by (item id, event id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from shared.log.events import (
    EventBase,
    QueueCreated,
    QueueDeleted,
    QueueItemAbandoned,
    QueueItemAdded,
    QueueItemCompleted,
    QueueItemFailed,
    QueueItemProgressed,
    QueueItemRetried,
    QueueItemSnapshot,
    QueueItemStarted,
    QueueSnapshot,
    QueueUpdated,
    type_of,
)

WORK_QUEUES = "work_queues"
QUEUE_ITEMS = "queue_items"
QUEUE_ITEM_DATA = "queue_item_data"
QUEUE_ITEM_HISTORY = "queue_item_history"
QUEUE_TABLES = (WORK_QUEUES, QUEUE_ITEMS, QUEUE_ITEM_DATA, QUEUE_ITEM_HISTORY)
QUEUE_PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    WORK_QUEUES: ("id",),
    QUEUE_ITEMS: ("id",),
    QUEUE_ITEM_DATA: ("item_id",),
    QUEUE_ITEM_HISTORY: ("item_id", "event_id"),
}

QueueEvent = QueueCreated | QueueUpdated | QueueDeleted
ItemEvent = (
    QueueItemAdded
    | QueueItemStarted
    | QueueItemProgressed
    | QueueItemCompleted
    | QueueItemFailed
    | QueueItemAbandoned
    | QueueItemRetried
)
QUEUE_EVENTS: tuple[type[EventBase], ...] = (
    QueueCreated,
    QueueUpdated,
    QueueDeleted,
    QueueItemAdded,
    QueueItemStarted,
    QueueItemProgressed,
    QueueItemCompleted,
    QueueItemFailed,
    QueueItemAbandoned,
    QueueItemRetried,
)

Rows = dict[str, dict[Any, dict[str, Any]]]
Touch = Callable[[str, Any], None]


def _json(value: Any) -> Any:
    """As a JSON column gives it back (the same normalisation as ``shared.readmodel.projection.json_value``)."""
    return msgspec.json.decode(msgspec.json.encode(value)) if value is not None else None


def _clip(value: str | None, length: int) -> str | None:
    return value if value is None or len(value) <= length else value[:length]


def fold_queue_event(rows: Rows, touch: Touch, event: EventBase) -> None:
    """Fold one event of :data:`QUEUE_EVENTS` into ``rows`` (table → key → row), marking what changed."""
    match event:
        case QueueCreated() | QueueUpdated() | QueueDeleted():
            _queue(rows, touch, event)
        case (
            QueueItemAdded()
            | QueueItemStarted()
            | QueueItemProgressed()
            | QueueItemCompleted()
            | QueueItemFailed()
            | QueueItemAbandoned()
            | QueueItemRetried()
        ):
            _item(rows, touch, event)
        case _:
            pass


def queue_row(queue_id: str, tenant_id: str, q: QueueSnapshot, deleted: bool) -> dict[str, Any]:
    return {
        "id": queue_id,
        "tenant_id": tenant_id,
        "name": _clip(q.name, 200),
        "description": q.description,
        "max_retries": q.max_retries,
        "sla_minutes": q.sla_minutes,
        "abandon_after_minutes": q.abandon_after_minutes,
        "unique_reference": q.unique_reference,
        "deleted": deleted,
        "created_at": q.created_at,
        "updated_at": q.updated_at,
    }


def _queue(rows: Rows, touch: Touch, event: QueueEvent) -> None:
    rows[WORK_QUEUES][event.aggregate_id] = queue_row(
        event.aggregate_id, event.tenant_id, event.queue, isinstance(event, QueueDeleted)
    )
    touch(WORK_QUEUES, event.aggregate_id)


def item_row(item_id: str, tenant_id: str, item: QueueItemSnapshot, ts: int, result: Any = None) -> dict[str, Any]:
    error = item.error
    return {
        "id": item_id,
        "tenant_id": tenant_id,
        "queue_id": item.queue_id,
        "status": item.status,
        "priority": item.priority,
        "reference": _clip(item.reference, 200),
        "deadline": item.deadline,
        "defer_until": item.defer_until,
        "retry_count": item.retry_count,
        "retry_of": item.retry_of,
        "retry_id": item.retry_id,
        "origin_at": item.origin_at,
        "created_at": item.created_at,
        "started_at": item.started_at,
        "finished_at": item.finished_at,
        "processing_ms": item.processing_ms,
        "processed_by": _clip(item.processed_by, 200),
        "execution_id": item.execution_id,
        "progress": item.progress,
        "result": _json(result),
        "error_message": error.message if error is not None else None,
        "error_kind": error.kind if error is not None else None,
        "updated_at": ts,
    }


def _detail(event: ItemEvent) -> str | None:
    """What the history shows beside the status: the error, the progress note, the retry's id, the execution."""
    item = event.item
    match event:
        case QueueItemFailed() if item.error is not None:
            return f"{item.error.kind}: {item.error.message}"
        case QueueItemProgressed():
            return item.progress
        case QueueItemStarted() if item.execution_id is not None:
            return f"execution {item.execution_id}"
        case QueueItemRetried():
            return f"retried as {item.retry_id} ({event.reason})"
        case QueueItemAdded() if item.retry_of is not None:
            return f"retry {item.retry_count} of {item.retry_of}"
        case _:
            return None


def _item(rows: Rows, touch: Touch, event: ItemEvent) -> None:
    item_id = event.aggregate_id
    item = event.item
    result = event.result if isinstance(event, QueueItemCompleted) else None
    rows[QUEUE_ITEMS][item_id] = item_row(item_id, event.tenant_id, item, event.ts, result)
    touch(QUEUE_ITEMS, item_id)
    if isinstance(event, QueueItemAdded):
        rows[QUEUE_ITEM_DATA][item_id] = {
            "item_id": item_id,
            "tenant_id": event.tenant_id,
            "queue_id": item.queue_id,
            "data": _json(event.data),
        }
        touch(QUEUE_ITEM_DATA, item_id)
    if event.id:  # a history row is keyed by its event's stream id; an event never written has none
        key = (item_id, event.id)
        rows[QUEUE_ITEM_HISTORY][key] = {
            "item_id": item_id,
            "event_id": event.id,
            "tenant_id": event.tenant_id,
            "queue_id": item.queue_id,
            "type": type_of(event),
            "status": item.status,
            "ts": event.ts,
            "processed_by": _clip(item.processed_by, 200),
            "detail": _detail(event),
            "execution_id": item.execution_id,
        }
        touch(QUEUE_ITEM_HISTORY, key)
