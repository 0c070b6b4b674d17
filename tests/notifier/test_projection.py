"""The notifications fold: each event gives the whole row, so any batch split and any replay agree."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.log.events import (
    EventBase,
    NotificationFailed,
    NotificationQueued,
    NotificationResendRequested,
    NotificationSent,
)
from shared.readmodel.projection import NOTIFICATIONS, Projection

TENANT = "t" * 32


def _event(kind: int, nid: str, i: int, attempt: int) -> EventBase:
    common: dict[str, Any] = {"tenant_id": TENANT, "aggregate_id": nid, "ts": 1_000 + i, "id": f"{1_000 + i}-0",
                              "execution_id": "x" * 32, "workflow_id": "w" * 32, "trigger": "failed",
                              "channel": "webhook", "target": "https://h.example.com/" + nid, "created_at": 1_000}
    match kind:
        case 0:
            return NotificationQueued(**common)
        case 1:
            return NotificationSent(**common, attempt=attempt, status_code=200)
        case 2:
            return NotificationFailed(**common, attempt=attempt, error="HTTP 500", status_code=500,
                                      retry_in_ms=100)
        case 3:
            return NotificationFailed(**common, attempt=attempt, error="HTTP 500", final=True)
        case _:
            return NotificationResendRequested(**common, attempts=attempt, delivered_at=900)


histories = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a" * 32, "b" * 32, "c" * 32]),
                               st.integers(1, 9)), min_size=1, max_size=30)


def _fold(batches: list[list[EventBase]]) -> dict[str, dict[str, Any]]:
    """Fold batch by batch through fresh projections, keeping only what a batch wrote (as SQL would)."""
    table: dict[str, dict[str, Any]] = {}
    for batch in batches:
        projection = Projection()
        projection.apply_all(batch)  # type: ignore[arg-type]
        for row in projection.changes().get(NOTIFICATIONS, []):
            table[row["id"]] = dict(row)
    return table


@settings(max_examples=150, deadline=None)
@given(histories, st.lists(st.integers(1, 5), min_size=1, max_size=10))
def test_any_batch_split_gives_the_same_rows(raw: list[tuple[int, str, int]], cuts: list[int]) -> None:
    events = [_event(kind, nid, i, attempt) for i, (kind, nid, attempt) in enumerate(raw)]
    whole = _fold([events])
    batches, start = [], 0
    for cut in cuts:
        batches.append(events[start:start + cut])
        start += cut
    batches.append(events[start:])
    assert _fold(batches) == whole
    assert _fold([events, events]) == whole  # redelivered events change nothing
    for nid, row in whole.items():
        last = [e for e in events if e.aggregate_id == nid][-1]
        assert row["updated_at"] == last.ts


def test_row_per_event_kind() -> None:
    nid = "a" * 32
    rows = _fold([[_event(0, nid, 0, 0)]])
    assert rows[nid]["status"] == "pending" and rows[nid]["attempts"] == 0
    rows = _fold([[_event(0, nid, 0, 0), _event(2, nid, 1, 1)]])
    assert rows[nid]["status"] == "retrying" and rows[nid]["last_status_code"] == 500
    rows = _fold([[_event(3, nid, 2, 2)]])
    assert rows[nid]["status"] == "failed" and rows[nid]["last_error"] == "HTTP 500"
    rows = _fold([[_event(1, nid, 3, 3)]])
    assert rows[nid]["status"] == "sent" and rows[nid]["delivered_at"] == 1_003 and rows[nid]["last_error"] is None
    rows = _fold([[_event(4, nid, 4, 3)]])
    assert rows[nid]["status"] == "pending" and rows[nid]["attempts"] == 3 and rows[nid]["delivered_at"] == 900
