"""Cron schedules of ``schedule`` triggers: validation and the ticks due at ``now``, as pure functions.

A schedule is a cron expression (croniter: 5 fields, a 6th for seconds, a 7th for the year) read in an IANA
time zone, so ``0 9 * * 1-5`` in ``Europe/Madrid`` fires at 09:00 local time across DST changes. Ticks are
epoch milliseconds. Nothing here reads a clock: callers pass ``now_ms``, so tests inject time.

What is due is decided from a **cursor**, the last tick already handled (fired or skipped), kept with the
trigger in Redis. A tick found within :data:`MISFIRE_GRACE_MS` of its time is on time; older ones were
missed (every trigger service was down) and the trigger's ``catch_up`` policy decides:

- ``one`` (default): fire the most recent missed tick once, skip the others;
- ``all``: fire every missed tick, oldest first, at most :data:`MAX_BATCH` per call (later calls go on);
- ``none``: skip every missed tick; only on-time ticks fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from shared.errors import ValidationFailed

CatchUp = Literal["one", "all", "none"]

MIN_INTERVAL_MS = 1000
MISFIRE_GRACE_MS = 15_000
MAX_BATCH = 100
# Missed ticks are counted up to this many (a week of an every-second schedule is not enumerated).
MAX_COUNTED = 10_000
MAX_EXPRESSION = 200
# Ticks compared when checking the shortest interval of a schedule.
INTERVAL_PROBES = 6


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated cron expression in a time zone."""

    expression: str
    timezone: str

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        start = datetime.fromtimestamp(ms / 1000, self._zone())
        return _ms(croniter(self.expression, start).get_next(float))

    def last_at_or_before(self, ms: int) -> int:
        """The latest tick at or before ``ms``."""
        start = datetime.fromtimestamp((ms + 1) / 1000, self._zone())
        return _ms(croniter(self.expression, start).get_prev(float))

    def ticks(self, after_ms: int, upto_ms: int, limit: int) -> list[int]:
        """Ticks in ``(after_ms, upto_ms]``, oldest first, at most ``limit`` of them."""
        out: list[int] = []
        it = croniter(self.expression, datetime.fromtimestamp(after_ms / 1000, self._zone()))
        while len(out) < limit:
            tick = _ms(it.get_next(float))
            if tick > upto_ms:
                break
            if tick > after_ms:  # croniter works in whole seconds: never hand back the cursor itself
                out.append(tick)
        return out


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


@lru_cache(maxsize=4096)
def parse(expression: str, timezone: str, field_prefix: str = "config.") -> Schedule:
    """A :class:`Schedule`, or a 422 naming ``cron`` or ``timezone`` (syntax only; see :func:`validate`)."""
    cron_field, tz_field = f"{field_prefix}cron", f"{field_prefix}timezone"
    if not expression.strip() or len(expression) > MAX_EXPRESSION or "\n" in expression:
        raise ValidationFailed(f"{cron_field}: 1 to {MAX_EXPRESSION} characters on one line", field=cron_field)
    if not 5 <= len(expression.split()) <= 7 and not expression.startswith("@"):
        raise ValidationFailed(
            f"{cron_field}: 5 fields (minute hour day month weekday), a 6th for seconds, a 7th for the year",
            field=cron_field,
        )
    try:
        valid = croniter.is_valid(expression)
    except (CroniterError, ValueError, TypeError):
        valid = False
    if not valid:
        raise ValidationFailed(f"{cron_field}: not a valid cron expression: {expression!r}", field=cron_field)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationFailed(
            f"{tz_field}: unknown time zone {timezone!r} (use an IANA name such as 'Europe/Madrid')", field=tz_field
        ) from None
    return Schedule(expression, timezone)


def validate(expression: str, timezone: str, now_ms: int, field_prefix: str = "config.") -> Schedule:
    """:func:`parse`, and the schedule must fire at some time after ``now_ms`` and never twice within a second."""
    schedule = parse(expression, timezone, field_prefix)
    cron_field = f"{field_prefix}cron"
    try:
        ticks = [schedule.next_after(now_ms)]
    except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
        raise ValidationFailed(f"{cron_field}: {expression!r} never fires", field=cron_field) from None
    try:
        for _ in range(INTERVAL_PROBES):
            ticks.append(schedule.next_after(ticks[-1]))
    except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
        pass  # a few more ticks and then never again (a year field): fine
    shortest = min((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=MIN_INTERVAL_MS)
    if shortest < MIN_INTERVAL_MS:
        raise ValidationFailed(f"{cron_field}: fires more than once a second", field=cron_field)
    return schedule


@dataclass(frozen=True, slots=True)
class Due:
    """What to do now: fire ``fire`` (oldest first), record ``skipped`` missed ticks, move the cursor."""

    fire: list[int]
    skipped: int
    cursor: int


def due(schedule: Schedule, cursor_ms: int, now_ms: int, catch_up: CatchUp) -> Due | None:
    """The ticks after ``cursor_ms`` up to ``now_ms`` and what the policy does with them; None when none is due."""
    try:
        first = schedule.next_after(cursor_ms)
    except CroniterBadDateError:
        return None
    if first > now_ms:
        return None
    if catch_up == "all":
        batch = schedule.ticks(cursor_ms, now_ms, MAX_BATCH)
        return Due(fire=batch, skipped=0, cursor=batch[-1])
    last = schedule.last_at_or_before(now_ms)
    if last <= cursor_ms:  # croniter rounding: nothing new after all
        return None
    missed = 0 if last == first else len(schedule.ticks(cursor_ms, last - 1, MAX_COUNTED))
    on_time = now_ms - last <= MISFIRE_GRACE_MS
    if catch_up == "none" and not on_time:
        return Due(fire=[], skipped=missed + 1, cursor=last)
    return Due(fire=[last], skipped=missed, cursor=last)


def iso_tick(ms: int, timezone: str) -> str:
    """A tick as local ISO 8601 time in the schedule's zone (what a fired run gets as ``params.tick``)."""
    zone = ZoneInfo(timezone) if timezone else UTC
    return datetime.fromtimestamp(ms / 1000, zone).isoformat()
