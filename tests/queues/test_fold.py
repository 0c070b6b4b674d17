"""The fold of work-queue events: rows from each event's snapshot, data and history rows, idempotency, and the
same rows whether a log is folded at once or in batches through SQL (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.log.events import (
    EventBase,
    QueueCreated,
    QueueDeleted,
    QueueItemAdded,
    QueueItemError,
    QueueItemFailed,
    QueueItemRetried,
    QueueItemSnapshot,
    QueueItemStarted,
    QueueSnapshot,
)
from shared.readmodel.projection import needs_of
from tests.projector.factories import MID_MONTH_MS, fold, with_ids
from tests.projector.helpers import assert_apply_is_idempotent, fold_in_batches
from tests.queues.factories import queue_histories, random_queue_history

T, Q, ITEM, R = "t" * 32, "q" * 32, "i" * 32, "r" * 32
replace = msgspec.structs.replace


def _history(*events: EventBase) -> list[EventBase]:
    return with_ids([replace(ev, ts=MID_MONTH_MS + 10 * i) for i, ev in enumerate(events)])


def test_queue_rows_follow_the_latest_snapshot() -> None:
    snap = QueueSnapshot(name="invoices", max_retries=2, created_at=1, updated_at=1)
    rows = fold(_history(QueueCreated(tenant_id=T, aggregate_id=Q, ts=0, queue=snap)))
    [row] = rows["work_queues"]
    assert (row["name"], row["max_retries"], row["sla_minutes"], row["deleted"]) == ("invoices", 2, 60, False)

    rows = fold(_history(QueueCreated(tenant_id=T, aggregate_id=Q, ts=0, queue=snap),
                         QueueDeleted(tenant_id=T, aggregate_id=Q, ts=0, queue=replace(snap, updated_at=9))))
    [row] = rows["work_queues"]
    assert row["deleted"] is True and row["updated_at"] == 9


def test_an_application_failure_with_its_retry() -> None:
    new = QueueItemSnapshot(queue_id=Q, status="new", priority=3, reference="INV-1", origin_at=5, created_at=5)
    started = replace(new, status="in_progress", started_at=7, processed_by="robot-1")
    failed = replace(started, status="failed", finished_at=9, processing_ms=2,
                     error=QueueItemError(message="SAP down", kind="application"))
    retry = replace(new, retry_count=1, retry_of=ITEM, created_at=9)
    events = _history(
        QueueItemAdded(tenant_id=T, aggregate_id=ITEM, ts=0, item=new, data={"invoice": 1}),
        QueueItemStarted(tenant_id=T, aggregate_id=ITEM, ts=0, item=started),
        QueueItemFailed(tenant_id=T, aggregate_id=ITEM, ts=0, item=failed),
        QueueItemRetried(tenant_id=T, aggregate_id=ITEM, ts=0, item=replace(failed, status="retried", retry_id=R)),
        QueueItemAdded(tenant_id=T, aggregate_id=R, ts=0, item=retry, data={"invoice": 1}),
    )
    rows = fold(events)
    items = {r["id"]: r for r in rows["queue_items"]}
    assert items[ITEM]["status"] == "retried" and items[ITEM]["retry_id"] == R
    assert (items[ITEM]["error_kind"], items[ITEM]["error_message"]) == ("application", "SAP down")
    assert (items[ITEM]["started_at"], items[ITEM]["finished_at"], items[ITEM]["processing_ms"]) == (7, 9, 2)
    assert items[R]["status"] == "new" and items[R]["retry_of"] == ITEM and items[R]["retry_count"] == 1
    assert items[R]["origin_at"] == 5 and items[R]["reference"] == "INV-1"
    assert {r["item_id"]: r["data"] for r in rows["queue_item_data"]} == {ITEM: {"invoice": 1}, R: {"invoice": 1}}
    history = [(r["type"], r["status"]) for r in rows["queue_item_history"] if r["item_id"] == ITEM]
    assert sorted(history) == sorted([("queue_item.added", "new"), ("queue_item.started", "in_progress"),
                                      ("queue_item.failed", "failed"), ("queue_item.retried", "retried")])
    details = {r["type"]: r["detail"] for r in rows["queue_item_history"] if r["item_id"] == ITEM}
    assert details["queue_item.failed"] == "application: SAP down" and R in details["queue_item.retried"]


def test_queue_events_need_no_rows_loaded() -> None:
    events = random_queue_history(3)
    needs = needs_of(events)
    assert not needs


def test_apply_twice_changes_nothing() -> None:
    once = assert_apply_is_idempotent(with_ids(random_queue_history(5)))
    assert once.rows["queue_items"] and once.rows["queue_item_history"] and once.rows["work_queues"]


@given(history=queue_histories(), data=st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_batches_through_sql_equal_one_fold(database_url: str, history: list[EventBase], data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(history)), max_size=5), label="cuts")
    asyncio.run(fold_in_batches(database_url, history, cuts))
