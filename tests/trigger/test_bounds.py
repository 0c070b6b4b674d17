"""The trigger service's in-process memory has a bound: files settling in the watcher, paused queue triggers
in the queue-item triggers. Pushed past their bounds through the real components (real files, real Redis)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from redis.asyncio import Redis

from services.trigger.file_watcher import FileWatcher
from services.trigger.queue_items import QUOTA_PAUSE_MS, QueueItemTriggers
from services.trigger.registry import live_triggers
from shared.domain.triggers.firing import Firer
from shared.infra.clock import month_of, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import TriggerFired
from tests.api.support import create_tenant
from tests.trigger.conftest import events_of, make_trigger

BOUND = 5


async def fired_files(redis: Redis, p: int) -> list[str]:
    return [e.source["file"] for e in await events_of(redis, p, "trigger.fired") if isinstance(e, TriggerFired)]


async def test_files_that_vanish_before_settling_are_forgotten_and_the_others_fire_once(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    tenant = await create_tenant(client, settings, plan="enterprise", name="uploads")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    await make_trigger(client, tenant, "file_watcher", folder=str(inbox), glob="*.csv", stable_ms=1_000)
    await asyncio.sleep(0.02)  # file times and the trigger's save time must differ
    watcher = FileWatcher(redis, firer, settings, clock_slack_ms=0, max_settling=BOUND)
    clock = now_ms()
    # Waves of temporary files, each more than the bound, gone before they settle (an upload tool's parts).
    for wave in range(4):
        paths = [inbox / f"part-{wave}-{i:02d}.csv" for i in range(2 * BOUND)]
        for path in paths:
            path.write_text("partial")
        assert await watcher.pass_once(clock) == 2 * BOUND, "all of them wait: tracked or waiting for room"
        assert watcher.settling <= BOUND
        for path in paths:
            path.unlink()
        clock += 200
    await watcher.pass_once(clock)
    assert watcher.settling == 0, "files that vanished before settling are forgotten"
    # More files than the bound that stay: each fires once, the bound holds all along.
    names = [f"keep-{i:02d}.csv" for i in range(2 * BOUND + 1)]
    for name in names:
        (inbox / name).write_text(name)
    for _ in range(10):
        await watcher.pass_once(clock)
        assert watcher.settling <= BOUND
        clock += 1_100
    assert sorted(await fired_files(redis, tenant.partition)) == names
    assert watcher.settling == 0


async def test_a_flooded_folder_leaves_room_for_the_files_of_other_triggers(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    tenant = await create_tenant(client, settings, plan="enterprise", name="two-inboxes")
    folders = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        trigger = await make_trigger(client, tenant, "file_watcher", folder=str(tmp_path / name), stable_ms=1_000)
        folders[trigger["id"]] = tmp_path / name
    await asyncio.sleep(0.02)
    # The trigger looked at first gets the flood: without a share per trigger it would take all the room.
    first, second = [t.id for t in await live_triggers(redis, settings.partitions, "file_watcher")]
    for i in range(4 * BOUND):
        (folders[first] / f"{i:03d}.bin").write_text("x")
    (folders[second] / "report.bin").write_text("y")
    watcher = FileWatcher(redis, firer, settings, clock_slack_ms=0, max_settling=BOUND, max_per_trigger=BOUND - 1)
    clock = now_ms()
    await watcher.pass_once(clock)
    assert watcher.settling == BOUND
    await watcher.pass_once(clock + 1_100)
    assert "report.bin" in await fired_files(redis, tenant.partition), "the quiet trigger's file fired on time"


async def test_paused_queue_triggers_stay_within_the_bound_and_are_forgotten_once_their_pause_ends(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, firer: Firer
) -> None:
    tenant = await create_tenant(client, settings, plan="trial", name="over-quota")
    r = await client.post("/api/queues", headers=tenant.headers, json={"name": "invoices"})
    assert r.status_code == 201, r.text
    queue_id = r.json()["id"]
    for _ in range(2 * BOUND):
        await make_trigger(client, tenant, "queue_item", queue_id=queue_id)
    r = await client.post(f"/api/queues/{queue_id}/items", headers=tenant.headers, json={"data": {"n": 1}})
    assert r.status_code == 201, r.text
    now = now_ms()
    await redis.set(keys.usage(tenant.partition, tenant.id, month_of(now)), 100)  # the trial's quota, used up
    clock = [now]
    queue_items = QueueItemTriggers(redis, firer, settings, clock=lambda: clock[0], max_paused=BOUND)
    assert await queue_items.feed_all() == 0
    assert queue_items.paused == BOUND, "every trigger was refused and paused; only the most recent are remembered"
    assert await queue_items.feed_all() == 0
    assert queue_items.paused == BOUND
    # The month's quota frees up (a plan change) and the pauses run out: nothing is remembered for them.
    await redis.delete(keys.usage(tenant.partition, tenant.id, month_of(now)))
    clock[0] = now + QUOTA_PAUSE_MS + 1
    assert await queue_items.feed_all() == 1, "one item, one run"
    assert queue_items.paused == 0
