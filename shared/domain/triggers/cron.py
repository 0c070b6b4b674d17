"""Cron schedules of ``schedule`` triggers: validation and the ticks due at ``now``, as pure functions.

A schedule is a cron expression read in an IANA time zone, so ``0 9 * * 1-5`` in ``Europe/Madrid`` fires at
09:00 local time across DST changes. Ticks are epoch milliseconds. Nothing here reads a clock: callers pass
``now_ms``, so tests inject time.

Five fields are classic cron (minute hour day month weekday). Six or seven fields are read in **Quartz order,
seconds first** (second minute hour day month weekday [year]), the form UiPath and Quartz users write; croniter
wants seconds sixth, so :func:`_to_croniter` moves the field. Quartz numbers weekdays 1-7 from Sunday where cron
numbers them 0-6, so a numeric weekday in the Quartz form is refused rather than silently shifted by a day.

Ticks are computed in local **wall time** and then placed on the time line (:meth:`Schedule._instant`), so DST
never doubles or loses a run: a wall time that happens twice (autumn) fires once, at its first occurrence; a
wall time that does not exist (spring) fires once, at the end of the gap (02:30 in Madrid → 03:00).

What is due is decided from a **cursor**, the last tick already handled (fired or skipped), kept with the
trigger in Redis. A tick found within :data:`MISFIRE_GRACE_MS` of its time is on time; older ones were
missed (every trigger service was down) and the trigger's ``catch_up`` policy decides:

- ``one`` (default): fire the most recent missed tick once, skip the others;
- ``all``: fire every missed tick, oldest first, at most :data:`MAX_BATCH` per call (later calls go on);
- ``none``: skip every missed tick; only on-time ticks fire.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from shared.infra.errors import ValidationFailed

CatchUp = Literal["one", "all", "none"]

MIN_INTERVAL_MS = 1000
MISFIRE_GRACE_MS = 15_000
MAX_BATCH = 100
# Missed ticks are counted up to this many (a week of an every-second schedule is not enumerated).
MAX_COUNTED = 10_000
MAX_EXPRESSION = 200
# Ticks compared when checking the shortest interval of a schedule.
INTERVAL_PROBES = 6
# How many upcoming ticks a schedule trigger's API view lists.
NEXT_FIRE_TIMES = 5
QUARTZ_FIELDS = (6, 7)
# A digit in the weekday field once `#n` (the n-th weekday of the month) is removed: a Quartz day number.
_NUMERIC_WEEKDAY = re.compile(r"\d")
_NTH = re.compile(r"#\d+")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated cron expression (as written) in a time zone; ``croniter_expression`` is what croniter reads."""

    expression: str
    timezone: str
    croniter_expression: str = ""

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _cron(self) -> str:
        return self.croniter_expression or _to_croniter(self.expression)

    def _wall(self, ms: int) -> datetime:
        """The naive local wall time of instant ``ms`` (what croniter iterates over)."""
        return datetime.fromtimestamp(ms / 1000, self._zone()).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> int:
        """When local wall time ``wall`` happens: its first occurrence when the clocks go back, the end of the
        gap when they go forward and it does not exist at all."""
        zone = self._zone()
        first = wall.replace(tzinfo=zone, fold=0)
        if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
            return _ms(first.timestamp())  # exists (once, or twice and this is the first time)
        return _gap_end(zone, wall)

    def _forward(self, ms: int) -> Iterator[int]:
        """Ticks strictly after ``ms``, ascending, each instant once (several skipped wall times share one)."""
        it = croniter(self._cron(), self._wall(ms))
        previous = ms
        while True:
            tick = self._instant(it.get_next(datetime))
            # Wall times already passed (the second run through a repeated hour) or merged into one gap end.
            if tick > previous:
                previous = tick
                yield tick

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        return next(self._forward(ms))

    def last_at_or_before(self, ms: int) -> int:
        """The latest tick at or before ``ms``."""
        here = datetime.fromtimestamp(ms / 1000, self._zone())
        start = here.replace(tzinfo=None) + timedelta(milliseconds=1)
        if here.fold:  # second run through a repeated hour: later wall times of that hour already fired
            start += _repeat_length(here)
        it = croniter(self._cron(), start)
        while True:
            tick = self._instant(it.get_prev(datetime))
            if tick <= ms:
                return tick

    def ticks(self, after_ms: int, upto_ms: int, limit: int) -> list[int]:
        """Ticks in ``(after_ms, upto_ms]``, oldest first, at most ``limit`` of them."""
        out: list[int] = []
        for tick in self._forward(after_ms):
            if tick > upto_ms or len(out) >= limit:
                break
            out.append(tick)
        return out

    def upcoming(self, now_ms: int, count: int = NEXT_FIRE_TIMES) -> list[str]:
        """The next ``count`` ticks after ``now_ms`` as ISO 8601 in the schedule's zone (fewer if it stops)."""
        out: list[str] = []
        try:
            for tick in self._forward(now_ms):
                out.append(iso_tick(tick, self.timezone))
                if len(out) >= count:
                    break
        except (CroniterBadDateError, CroniterBadCronError, ValueError, OverflowError):
            pass  # a year field ran out: the remaining ticks are all there are
        return out


def _gap_end(zone: ZoneInfo, wall: datetime) -> int:
    """The instant the clocks jumped over non-existent ``wall``: the first whole second with the later offset.

    PEP 495: in a gap ``fold=1`` applies the offset after the jump (an instant before it) and ``fold=0`` the
    offset before (an instant after it), so the jump lies between the two; halve the interval to find it.
    """
    low = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    high = int(wall.replace(tzinfo=zone, fold=0).timestamp())
    after = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high * 1000


def _repeat_length(here: datetime) -> timedelta:
    """How far the clocks went back at the repeated hour ``here`` (fold=1) is in."""
    earlier = here.replace(fold=0).utcoffset()
    later = here.utcoffset()
    if earlier is None or later is None:
        return timedelta(0)
    return earlier - later


def _to_croniter(expression: str) -> str:
    """Quartz order (seconds first) to croniter's (seconds sixth); 5 fields and ``@`` macros unchanged."""
    fields = expression.split()
    if len(fields) not in QUARTZ_FIELDS:
        return expression
    seconds, rest = fields[0], [("*" if f == "?" else f) for f in fields[1:]]
    return " ".join([*rest[:5], seconds, *rest[5:]])


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


@lru_cache(maxsize=4096)
def parse(expression: str, timezone: str, field_prefix: str = "config.") -> Schedule:
    """A :class:`Schedule`, or a 422 naming ``cron`` or ``timezone`` (syntax only; see :func:`validate`)."""
    cron_field, tz_field = f"{field_prefix}cron", f"{field_prefix}timezone"
    if not expression.strip() or len(expression) > MAX_EXPRESSION or "\n" in expression:
        raise ValidationFailed(f"{cron_field}: 1 to {MAX_EXPRESSION} characters on one line", field=cron_field)
    fields = expression.split()
    if not 5 <= len(fields) <= 7 and not expression.startswith("@"):
        raise ValidationFailed(
            f"{cron_field}: 5 fields (minute hour day month weekday), or 6-7 in Quartz order with seconds first "
            "(second minute hour day month weekday [year])",
            field=cron_field,
        )
    if len(fields) in QUARTZ_FIELDS and _NUMERIC_WEEKDAY.search(_NTH.sub("", fields[5])):
        raise ValidationFailed(
            f"{cron_field}: a 6- or 7-field (Quartz, seconds first) expression must name its weekdays "
            f"(MON-FRI, SUN): Quartz numbers Sunday 1 and cron numbers it 0, so {fields[5]!r} is ambiguous",
            field=cron_field,
        )
    translated = _to_croniter(expression)
    try:
        valid = croniter.is_valid(translated)
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
    return Schedule(expression, timezone, translated)


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
