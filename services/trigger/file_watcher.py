"""``file_watcher`` triggers: each new file in a folder that matches the glob fires once, when it stopped growing.

``watchfiles`` (inotify on Linux) wakes the loop as soon as something changes in a watched folder; a rescan
every :data:`RESCAN_S` catches what notifications miss (network filesystems, queue overflows). A file is a
candidate when its name matches ``config.glob`` and it appeared after the trigger was last saved (its inode
change time, which a move into the folder also sets; ``include_existing`` fires older files too). It fires
once its size and modification time stayed the same for ``config.stable_ms``.

What fired is remembered in Redis (``orq:{p}:trigger:<id>:files``: name → "<mtime_ns>:<size>"), set in the
firing unit by compare-and-set, so a file fires once across restarts and across instances watching the same
folder; a file replaced by a different one (another size or time) is new and fires again. With
``move_to_processed`` the file is moved to ``<folder>/processed/`` after its firing (also after a crash in
between: a fired file still in the folder is moved on the next pass).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import watchfiles
from redis.asyncio import Redis

from services.trigger.registry import config_of, live_triggers
from shared.domain.triggers.definitions import FileWatcherConfig, TriggerState
from shared.domain.triggers.firing import Fired, Firer, Request, Swap
from shared.infra.clock import iso, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.redis import text
from shared.service import metrics

log = logging.getLogger(__name__)

RESCAN_S = 5.0
PRUNE_S = 60.0
PROCESSED = "processed"
# Clocks of the API host and the file host may differ a little.
CLOCK_SLACK_MS = 2_000
# Files waiting to settle that one watcher tracks at once, across every trigger. An entry is a name and a
# size/time (~200 bytes), so at most ~2 MB. Past it, new files are not tracked yet: they stay in their folder
# and are taken as tracked ones fire or vanish (a flooded folder delays files, never grows memory).
MAX_SETTLING = 10_000
# Of those, at most this many for one trigger: a folder flooded with files takes a tenth of the room, so the
# files of other triggers (other tenants) are still tracked and fire on time.
MAX_SETTLING_PER_TRIGGER = 1_000


@dataclass(slots=True)
class _Seen:
    identity: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    path: str
    identity: str
    size: int
    mtime_ms: int


def scan(folder: str, config: FileWatcherConfig, newer_than_ms: int | None) -> list[Candidate]:
    """Files of ``folder`` matching the glob (and changed after ``newer_than_ms``), by name."""
    out = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not fnmatch.fnmatchcase(entry.name, config.glob):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # gone between listing and stat
                continue
            if newer_than_ms is not None and st.st_ctime_ns // 1_000_000 < newer_than_ms:
                continue
            out.append(Candidate(entry.name, entry.path, f"{st.st_mtime_ns}:{st.st_size}", st.st_size,
                                 st.st_mtime_ns // 1_000_000))
    return sorted(out, key=lambda c: c.name)


def move_to_processed(path: str) -> str:
    """Move a fired file into ``processed/`` beside it (a suffix when the name is taken); its new path."""
    folder, name = os.path.split(path)
    target_dir = os.path.join(folder, PROCESSED)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, name)
    stem, ext = os.path.splitext(name)
    n = 1
    while os.path.exists(target):
        target = os.path.join(target_dir, f"{stem}.{n}{ext}")
        n += 1
    os.replace(path, target)
    return target


class FileWatcher:
    """Scans the folders of every live file_watcher trigger and fires their new, settled files."""

    def __init__(self, redis: Redis, firer: Firer, settings: Settings, clock: Callable[[], int] = now_ms,
                 clock_slack_ms: int = CLOCK_SLACK_MS, max_settling: int = MAX_SETTLING,
                 max_per_trigger: int = MAX_SETTLING_PER_TRIGGER) -> None:
        self.redis = redis
        self.clock_slack_ms = clock_slack_ms
        self.firer = firer
        self.settings = settings
        self.clock = clock
        self.max_settling = max_settling
        self.max_per_trigger = max_per_trigger
        # trigger id → name → since when the file is unchanged: only files present and not yet fired at the
        # trigger's last look, at most ``max_per_trigger`` per trigger and ``max_settling`` in all (``_settling``
        # counts them).
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._settling = 0
        self._wake = asyncio.Event()
        self._watches: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._next_prune = 0.0

    @property
    def settling(self) -> int:
        """How many files this watcher tracks while they settle."""
        return self._settling

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                pending = 0
                try:
                    pending = await self.pass_once(self.clock())
                except Exception:  # a loop's top level: log, wait, go on
                    log.exception("file watcher pass failed")
                self._wake.clear()
                wait = self.settings.trigger_poll_s if pending else RESCAN_S
                with suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop, self._wake), wait)
        finally:
            for watch_stop, task in self._watches.values():
                watch_stop.set()
                task.cancel()
            await asyncio.gather(*(t for _, t in self._watches.values()), return_exceptions=True)

    async def pass_once(self, now: int) -> int:
        """Scan every watched folder once; returns how many files are waiting to settle."""
        triggers = await live_triggers(self.redis, self.settings.partitions, "file_watcher")
        folders = set()
        pending = 0
        for trigger in triggers:
            config = config_of(trigger, FileWatcherConfig)
            if config is None:
                continue
            folders.add(config.folder)
            pending += await self.check(trigger, config, now)
        self._follow(folders)
        if now / 1000 >= self._next_prune:
            self._next_prune = now / 1000 + PRUNE_S
            await self._prune(triggers)
        return pending

    async def check(self, trigger: TriggerState, config: FileWatcherConfig, now: int) -> int:
        """Fire the settled new files of one trigger; returns how many are still settling."""
        newer_than = None if config.include_existing else trigger.updated_at - self.clock_slack_ms
        try:
            candidates = await asyncio.to_thread(scan, config.folder, config, newer_than)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            log.debug("cannot watch %s for trigger %s: %s", config.folder, trigger.id, exc)
            candidates = []
        recorded: list[str] = []
        if candidates:
            files_key = keys.trigger_files(trigger.partition, trigger.id)
            recorded = [text(v) for v in await self.redis.hmget(files_key, [c.name for c in candidates])]
        # What this trigger tracks is rebuilt from what is in its folder now: files that vanished are forgotten.
        previous = self._seen.pop(trigger.id, {})
        self._settling -= len(previous)
        tracked: dict[str, _Seen] = {}
        stranded: list[str] = []
        due: list[tuple[Candidate, str]] = []
        pending = 0
        for candidate, fired_as in zip(candidates, recorded, strict=True):
            if fired_as == candidate.identity:
                if config.move_to_processed:  # fired, but the move did not happen (a crash in between)
                    stranded.append(candidate.path)
                continue
            seen = previous.get(candidate.name)
            if seen is None or seen.identity != candidate.identity:
                if len(tracked) >= self.max_per_trigger or self._settling + len(tracked) >= self.max_settling:
                    pending += 1  # no room to track it yet: it stays in the folder for a later look
                    continue
                seen = _Seen(candidate.identity, now)
            tracked[candidate.name] = seen
            if now - seen.since_ms < config.stable_ms:
                pending += 1
            else:
                due.append((candidate, fired_as))
        if tracked:
            self._seen[trigger.id] = tracked
            self._settling += len(tracked)
        for path in stranded:
            await asyncio.to_thread(_move_quietly, path)
        for candidate, fired_as in due:
            await self._fire(trigger, config, candidate, fired_as, now)
        return pending

    async def _fire(self, trigger: TriggerState, config: FileWatcherConfig, candidate: Candidate, fired_as: str,
                    now: int) -> None:
        files_key = keys.trigger_files(trigger.partition, trigger.id)
        path = candidate.path
        if config.move_to_processed:  # the run gets the path the file will have
            path = os.path.join(os.path.dirname(path), PROCESSED, candidate.name)
        params = {"path": path, "name": candidate.name, "folder": config.folder, "size": candidate.size,
                  "modified_at": iso(candidate.mtime_ms)}
        request = Request(params=params, source={"file": candidate.name, "size": candidate.size},
                          claims=[Swap(files_key, candidate.name, fired_as, candidate.identity)])
        outcome = await self.firer.fire(trigger.partition, trigger.id, request, now)
        if isinstance(outcome, Fired):
            metrics.trigger_fired(outcome.trigger.type)
            log.info("file trigger %s fired for %s: execution %s", trigger.id, candidate.path, outcome.execution_id,
                     extra={"trigger_id": trigger.id, "execution_id": outcome.execution_id})
            if config.move_to_processed:
                await asyncio.to_thread(_move_quietly, candidate.path)
        self._forget(trigger.id, candidate.name)

    def _forget(self, trigger_id: str, name: str) -> None:
        """Stop tracking a file (it was just fired or refused; refused ones settle again from the next look)."""
        files = self._seen.get(trigger_id)
        if files is not None and files.pop(name, None) is not None:
            self._settling -= 1
            if not files:
                del self._seen[trigger_id]

    def _follow(self, folders: set[str]) -> None:
        """Keep one watchfiles task per watched folder (they only wake the loop)."""
        for folder in list(self._watches):
            watch_stop, task = self._watches[folder]
            if folder not in folders or task.done():
                watch_stop.set()
                del self._watches[folder]
        for folder in folders - set(self._watches):
            if os.path.isdir(folder):
                watch_stop = asyncio.Event()
                task = asyncio.create_task(self._watch(folder, watch_stop), name=f"watch {folder}")
                self._watches[folder] = (watch_stop, task)

    async def _watch(self, folder: str, watch_stop: asyncio.Event) -> None:
        try:
            async for _ in watchfiles.awatch(folder, watch_filter=None, stop_event=watch_stop, recursive=False,
                                             debounce=100, step=20):
                self._wake.set()
        except Exception as exc:  # the folder went away: the next pass starts a new watch if it comes back
            log.debug("stopped watching %s: %s", folder, exc)

    async def _prune(self, triggers: list[TriggerState]) -> None:
        """Forget fired files no longer in their folder, so the memory stays the folder's size."""
        for trigger in triggers:
            config = config_of(trigger, FileWatcherConfig)
            if config is None or not os.path.isdir(config.folder):
                continue
            files_key = keys.trigger_files(trigger.partition, trigger.id)
            names = [text(n) for n in await self.redis.hkeys(files_key)]
            gone = [n for n in names if not os.path.exists(os.path.join(config.folder, n))]
            if gone:
                await self.redis.hdel(files_key, *gone)
        live = {t.id for t in triggers}
        self._seen = {k: v for k, v in self._seen.items() if k in live}
        self._settling = sum(len(v) for v in self._seen.values())


def _move_quietly(path: str) -> None:
    try:
        move_to_processed(path)
    except FileNotFoundError:  # another instance moved it first
        pass
    except OSError as exc:
        log.warning("could not move %s to %s/: %s", path, PROCESSED, exc)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
