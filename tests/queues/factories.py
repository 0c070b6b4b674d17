"""Work-queue event histories for fold tests: queues and item lifecycles (with retry chains), interleaved.

The choices come from a :class:`tests.projector.factories.Chooser` (hypothesis or a seeded random), so the same
generator serves property tests and scenarios.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from hypothesis import strategies as st

from shared.log.events import (
    EventBase,
    QueueCreated,
    QueueDeleted,
    QueueItemAbandoned,
    QueueItemAdded,
    QueueItemCompleted,
    QueueItemError,
    QueueItemFailed,
    QueueItemProgressed,
    QueueItemRetried,
    QueueItemSnapshot,
    QueueItemStarted,
    QueueSnapshot,
    QueueUpdated,
)
from tests.projector.factories import MID_MONTH_MS, Chooser, DrawChooser, RandomChooser, with_ids

replace = msgspec.structs.replace


def _tenant(t: int) -> str:
    return f"qtenant{t:02d}".ljust(32, "0")


def _queue_events(c: Chooser, tenant: str, queue_id: str) -> tuple[list[EventBase], list[EventBase], int]:
    """(creation, later changes, max_retries)."""
    retries = c.integer(0, 2)
    snap = QueueSnapshot(name=f"q {queue_id[:6]}", max_retries=retries, sla_minutes=c.integer(1, 90),
                         unique_reference=c.chance(0.5), created_at=0, updated_at=0)
    later: list[EventBase] = []
    if c.chance(0.4):
        later.append(QueueUpdated(tenant_id=tenant, aggregate_id=queue_id, ts=0,
                                  queue=replace(snap, description=f"v{c.integer(2, 9)}", sla_minutes=5)))
    if c.chance(0.2):
        later.append(QueueDeleted(tenant_id=tenant, aggregate_id=queue_id, ts=0, queue=snap))
    return [QueueCreated(tenant_id=tenant, aggregate_id=queue_id, ts=0, queue=snap)], later, retries


def item_lifecycle(c: Chooser, tenant: str, queue_id: str, item_id: str, retries: int) -> list[EventBase]:
    """An item from ``added`` to an end (or left new / in progress), with the retries its failures cause."""
    data: dict[str, Any] = {"n": c.integer(0, 99), "v": c.json()}
    snap = QueueItemSnapshot(queue_id=queue_id, status="new", priority=c.integer(1, 10),
                             reference=c.choice([None, f"REF-{c.integer(1, 5)}"]),
                             deadline=c.choice([None, MID_MONTH_MS + 10_000]), origin_at=0, created_at=0)
    out: list[EventBase] = []
    attempt = 0
    current = item_id
    while True:
        out.append(QueueItemAdded(tenant_id=tenant, aggregate_id=current, ts=0, item=snap, data=data))
        if c.chance(0.15):
            return out  # still new
        snap = replace(snap, status="in_progress", started_at=1, processed_by=f"robot-{c.integer(1, 3)}")
        out.append(QueueItemStarted(tenant_id=tenant, aggregate_id=current, ts=0, item=snap))
        if c.chance(0.3):
            snap = replace(snap, progress=f"step {c.integer(1, 4)}")
            out.append(QueueItemProgressed(tenant_id=tenant, aggregate_id=current, ts=0, item=snap))
        ending = c.choice(["open", "completed", "business", "application", "abandoned"])
        if ending == "open":
            return out
        if ending == "completed":
            snap = replace(snap, status="completed", finished_at=2, processing_ms=c.integer(0, 500))
            out.append(QueueItemCompleted(tenant_id=tenant, aggregate_id=current, ts=0, item=snap, result=c.json()))
            return out
        if ending == "abandoned":
            snap = replace(snap, status="abandoned", finished_at=2)
            out.append(QueueItemAbandoned(tenant_id=tenant, aggregate_id=current, ts=0, item=snap))
        else:
            kind: Literal["business", "application"] = "business" if ending == "business" else "application"
            snap = replace(snap, status="failed", finished_at=2, processing_ms=3,
                           error=QueueItemError(message=f"boom {attempt}", kind=kind))
            out.append(QueueItemFailed(tenant_id=tenant, aggregate_id=current, ts=0, item=snap))
        if ending == "business" or attempt >= retries:
            return out
        retry_id = f"{item_id[:26]}r{attempt:05d}"
        out.append(QueueItemRetried(tenant_id=tenant, aggregate_id=current, ts=0,
                                    item=replace(snap, status="retried", retry_id=retry_id),
                                    reason="abandoned" if ending == "abandoned" else "failed"))
        attempt += 1
        snap = QueueItemSnapshot(queue_id=queue_id, status="new", priority=snap.priority, reference=snap.reference,
                                 deadline=snap.deadline, retry_count=attempt, retry_of=current, origin_at=0,
                                 created_at=0)
        current = retry_id


def queue_history(c: Chooser, *, tenants: int, queues: int, items: int, start_ms: int) -> list[EventBase]:
    """Queues first, then item lifecycles and queue changes interleaved; ``ts`` increasing."""
    setup: list[EventBase] = []
    lanes: list[list[EventBase]] = []
    made: list[tuple[str, str, int]] = []
    for q in range(queues):
        tenant = _tenant(c.integer(0, tenants - 1))
        queue_id = f"queue{q:03d}".ljust(32, "0")
        created, later, retries = _queue_events(c, tenant, queue_id)
        setup += created
        lanes.append(later)
        made.append((tenant, queue_id, retries))
    for i in range(items):
        tenant, queue_id, retries = c.choice(made)
        lanes.append(item_lifecycle(c, tenant, queue_id, f"item{i:04d}".ljust(32, "0"), retries))
    events = list(setup)
    while any(lanes):
        lane = c.choice([lane for lane in lanes if lane])
        events.append(lane.pop(0))
    return [_stamped(ev, start_ms + 5 * i) for i, ev in enumerate(events)]


def _stamped(event: EventBase, ts: int) -> EventBase:
    """Set ``ts`` and the times inside snapshots relative to it (so rows carry real-looking times)."""
    item = getattr(event, "item", None)
    if isinstance(item, QueueItemSnapshot):
        times = {f: ts - 5 + getattr(item, f) for f in ("started_at", "finished_at") if getattr(item, f) is not None}
        item = replace(item, origin_at=ts - 100, created_at=ts - 50, **times)
        return replace(event, ts=ts, item=item)
    queue = getattr(event, "queue", None)
    if isinstance(queue, QueueSnapshot):
        return replace(event, ts=ts, queue=replace(queue, created_at=ts - 1, updated_at=ts))
    return replace(event, ts=ts)


@st.composite
def queue_histories(draw: st.DrawFn, max_items: int = 6) -> list[EventBase]:
    c = DrawChooser(draw)
    return with_ids(queue_history(c, tenants=c.integer(1, 2), queues=c.integer(1, 2), items=c.integer(1, max_items),
                                  start_ms=MID_MONTH_MS))


def random_queue_history(seed: int, *, tenants: int = 2, queues: int = 3, items: int = 40) -> list[EventBase]:
    return queue_history(RandomChooser(seed), tenants=tenants, queues=queues, items=items, start_ms=MID_MONTH_MS)
