"""The ``workflow_triggers`` fold: each row is its trigger's latest snapshot; folding in one batch or in many
(through SQL round trips) gives the same rows, and re-applying events changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.log.events import EventBase, TriggerDeleted, TriggerFired, TriggerSaved, TriggerSkipped, TriggerSnapshot
from shared.readmodel.projection import TRIGGERS, Projection
from tests.projector.factories import MID_MONTH_MS, with_ids
from tests.projector.helpers import assert_apply_is_idempotent, fold_in_batches

TENANTS = ("t" * 32, "u" * 32)
CONFIGS: list[dict[str, Any]] = [{}, {"cron": "* * * * *", "timezone": "Europe/Madrid"}, {"token": "ab" * 20},
                                 {"folder": "/in", "glob": "*.csv", "params": {"n": [1, {"x": None}]}}]


@st.composite
def trigger_histories(draw: st.DrawFn) -> list[EventBase]:
    """Valid lives of a few triggers, interleaved: saved, then saves, firings and skips, maybe a delete."""
    lives = []
    for n in range(draw(st.integers(1, 4))):
        tenant = draw(st.sampled_from(TENANTS))
        trigger_id = f"{n:032d}"
        snap = TriggerSnapshot(workflow_id="w" * 32, trigger_type=draw(st.sampled_from(["schedule", "webhook"])),
                               config=draw(st.sampled_from(CONFIGS)), enabled=True, revision=1,
                               created_at=MID_MONTH_MS)
        life: list[EventBase] = [TriggerSaved(tenant_id=tenant, aggregate_id=trigger_id, ts=0, trigger=snap)]
        for step in draw(st.lists(st.sampled_from(["save", "fire", "skip"]), max_size=6)):
            if step == "skip":
                life.append(TriggerSkipped(tenant_id=tenant, aggregate_id=trigger_id, ts=0,
                                           workflow_id=snap.workflow_id, trigger_type=snap.trigger_type,
                                           reason="overlap"))
                continue
            if step == "save":
                snap = msgspec.structs.replace(snap, revision=snap.revision + 1, enabled=draw(st.booleans()),
                                               config=draw(st.sampled_from(CONFIGS)))
                life.append(TriggerSaved(tenant_id=tenant, aggregate_id=trigger_id, ts=0, trigger=snap))
            else:
                snap = msgspec.structs.replace(snap, revision=snap.revision + 1,
                                               trigger_count=snap.trigger_count + 1, last_triggered_at=MID_MONTH_MS)
                life.append(TriggerFired(tenant_id=tenant, aggregate_id=trigger_id, ts=0, trigger=snap,
                                         execution_id=f"{len(life):032d}"))
        if draw(st.booleans()):
            snap = msgspec.structs.replace(snap, revision=snap.revision + 1)
            life.append(TriggerDeleted(tenant_id=tenant, aggregate_id=trigger_id, ts=0, trigger=snap))
        lives.append(life)
    merged: list[EventBase] = []
    while any(lives):
        life = draw(st.sampled_from([lf for lf in lives if lf]))
        merged.append(life.pop(0))
    timed = [msgspec.structs.replace(ev, ts=MID_MONTH_MS + 10 * i) for i, ev in enumerate(merged)]
    return with_ids(timed)


def test_a_row_is_the_latest_snapshot() -> None:
    snap = TriggerSnapshot(workflow_id="w" * 32, trigger_type="schedule", config={"cron": "* * * * *"},
                           enabled=True, revision=1, created_at=5)
    fired = msgspec.structs.replace(snap, revision=2, trigger_count=1, last_triggered_at=70)
    events = with_ids([
        TriggerSaved(tenant_id="t", aggregate_id="g", ts=10, trigger=snap),
        TriggerFired(tenant_id="t", aggregate_id="g", ts=70, trigger=fired, execution_id="x"),
        TriggerSkipped(tenant_id="t", aggregate_id="g", ts=80, workflow_id="w" * 32, trigger_type="schedule",
                       reason="quota"),
        TriggerDeleted(tenant_id="t", aggregate_id="g", ts=90, trigger=msgspec.structs.replace(fired, revision=3)),
    ])
    projection = Projection()
    projection.apply_all(events[:3])  # type: ignore[arg-type]
    assert projection.rows[TRIGGERS]["g"] == {
        "id": "g", "tenant_id": "t", "workflow_id": "w" * 32, "trigger_type": "schedule",
        "config": {"cron": "* * * * *"}, "enabled": True, "deleted": False, "revision": 2, "trigger_count": 1,
        "last_triggered_at": 70, "created_at": 5, "updated_at": 70}
    projection.apply(events[3])
    row = projection.rows[TRIGGERS]["g"]
    assert row["deleted"] and row["revision"] == 3 and row["trigger_count"] == 1


@given(history=trigger_histories())
@settings(max_examples=60, deadline=None)
def test_apply_is_idempotent(history: list[EventBase]) -> None:
    once = assert_apply_is_idempotent(history)
    latest = {ev.aggregate_id: ev for ev in history if not isinstance(ev, TriggerSkipped)}
    for trigger_id, ev in latest.items():
        assert isinstance(ev, TriggerSaved | TriggerFired | TriggerDeleted)
        assert once.rows[TRIGGERS][trigger_id]["revision"] == ev.trigger.revision


@given(history=trigger_histories(), data=st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_batches_through_sql_equal_one_fold(database_url: str, history: list[EventBase], data: st.DataObject) -> None:
    cuts: Sequence[int] = data.draw(st.lists(st.integers(0, len(history)), max_size=4), label="cuts")
    asyncio.run(fold_in_batches(database_url, history, cuts))
