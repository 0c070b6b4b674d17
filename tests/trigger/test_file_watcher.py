"""File watcher on real files in a temp folder: new files fire once when settled (also across a restart of the
watcher), growing files wait, older files are left alone unless asked, fired files move to ``processed/``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
from redis.asyncio import Redis

from services.trigger.file_watcher import FileWatcher
from shared.domain.triggers.firing import Firer
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log.events import ExecutionQueued, TriggerFired
from tests.api.support import TenantHandle
from tests.helpers import assert_eventually
from tests.trigger.conftest import events_of, make_trigger


async def fired_files(redis: Redis, p: int) -> list[str]:
    return [e.source["file"] for e in await events_of(redis, p, "trigger.fired") if isinstance(e, TriggerFired)]


async def test_new_files_fire_once_after_they_settle(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.csv").write_text("before the trigger existed")
    await asyncio.sleep(0.02)  # file times and the trigger's save time must differ
    trigger = await make_trigger(client, tenant, "file_watcher", folder=str(inbox), glob="*.csv", stable_ms=300)
    await asyncio.sleep(0.02)
    (inbox / "a.csv").write_text("1,2,3\n")
    (inbox / "notes.txt").write_text("not matched by the glob")
    watcher = FileWatcher(redis, firer, settings, clock_slack_ms=0)
    start = now_ms()
    assert await watcher.pass_once(start) == 1, "seen, settling"
    assert await fired_files(redis, tenant.partition) == []
    await watcher.pass_once(start + 400)
    assert await fired_files(redis, tenant.partition) == ["a.csv"]
    queued = await events_of(redis, tenant.partition, "execution.queued")
    assert isinstance(queued[0], ExecutionQueued) and queued[0].trigger_type == "file_watcher"
    assert queued[0].params["path"] == str(inbox / "a.csv") and queued[0].params["size"] == 6
    await watcher.pass_once(start + 1_000)
    # A restart of the trigger service: a new watcher remembers nothing in memory; Redis remembers.
    restarted = FileWatcher(redis, firer, settings, clock_slack_ms=0)
    await restarted.pass_once(start + 2_000)
    await restarted.pass_once(start + 3_000)
    assert await fired_files(redis, tenant.partition) == ["a.csv"]
    # The same name with new contents is a new file.
    (inbox / "a.csv").write_text("4,5,6,7\n")
    await restarted.pass_once(start + 4_000)
    await restarted.pass_once(start + 5_000)
    assert await fired_files(redis, tenant.partition) == ["a.csv", "a.csv"]
    assert trigger["trigger_type"] == "file_watcher"


async def test_a_growing_file_waits_until_it_stops(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "uploads"
    tmp_path.mkdir()
    await make_trigger(client, tenant, "file_watcher", folder=str(tmp_path), stable_ms=1_000)
    watcher = FileWatcher(redis, firer, settings)
    path = tmp_path / "upload.bin"
    clock = now_ms() + 5_000
    with open(path, "wb") as f:
        for _ in range(5):
            f.write(b"x" * 1000)
            f.flush()
            os.fsync(f.fileno())
            await watcher.pass_once(clock)
            clock += 600  # grows every 600 ms: never stable for 1 s
    assert await fired_files(redis, tenant.partition) == []
    await watcher.pass_once(clock)
    await watcher.pass_once(clock + 1_100)
    assert await fired_files(redis, tenant.partition) == ["upload.bin"]
    queued = await events_of(redis, tenant.partition, "execution.queued")
    assert isinstance(queued[0], ExecutionQueued) and queued[0].params["size"] == 5000


async def test_existing_files_and_processed_folder(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "scans"
    tmp_path.mkdir()
    (tmp_path / "waiting.pdf").write_bytes(b"%PDF")
    await make_trigger(client, tenant, "file_watcher", folder=str(tmp_path), glob="*.pdf", stable_ms=0,
                       include_existing=True, move_to_processed=True)
    watcher = FileWatcher(redis, firer, settings)
    await watcher.pass_once(now_ms())
    assert await fired_files(redis, tenant.partition) == ["waiting.pdf"]
    assert not (tmp_path / "waiting.pdf").exists() and (tmp_path / "processed" / "waiting.pdf").exists()
    queued = await events_of(redis, tenant.partition, "execution.queued")
    assert isinstance(queued[0], ExecutionQueued)
    assert queued[0].params["path"] == str(tmp_path / "processed" / "waiting.pdf")
    (tmp_path / "waiting.pdf").write_bytes(b"%PDF-2")  # same name again: moved beside the first
    await watcher.pass_once(now_ms())
    assert sorted(os.listdir(tmp_path / "processed")) == ["waiting.1.pdf", "waiting.pdf"]


async def test_the_running_watcher_picks_up_a_file_by_itself(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "drop"
    tmp_path.mkdir()
    await make_trigger(client, tenant, "file_watcher", folder=str(tmp_path), stable_ms=200)
    stop = asyncio.Event()
    task = asyncio.create_task(FileWatcher(redis, firer, settings).run(stop))
    try:
        await asyncio.sleep(0.3)
        (tmp_path / "dropped.txt").write_text("hello")

        async def fired() -> list[str]:
            files = await fired_files(redis, tenant.partition)
            assert files == ["dropped.txt"]
            return files

        await assert_eventually(fired, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


