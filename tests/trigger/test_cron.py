"""Cron schedules as pure functions of ``now``: validation, time zones and DST, catch-up policies."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shared.domain.triggers import cron
from shared.infra.errors import ValidationFailed


def ms(text: str, zone: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def local(tick: int, zone: str) -> str:
    return datetime.fromtimestamp(tick / 1000, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S%z")


NOW = ms("2026-03-27 12:00:00")


def test_validate_accepts_five_six_and_seven_fields_and_macros() -> None:
    for expression in ("0 9 * * 1-5", "*/5 * * * * *", "0 0 12 * * ? 2030", "@hourly", "* * * * * *"):
        cron.validate(expression, "UTC", NOW)


@pytest.mark.parametrize(
    ("expression", "zone", "field"),
    [
        ("", "UTC", "config.cron"),
        ("* * * *", "UTC", "config.cron"),
        ("61 * * * *", "UTC", "config.cron"),
        ("0 0 30 2 *", "UTC", "config.cron"),
        ("* * * * * * 2020", "UTC", "config.cron"),
        ("0 9 * * *", "Nowhere/Land", "config.timezone"),
        ("0 9 * * *", "../../etc/passwd", "config.timezone"),
    ],
)
def test_validate_refuses(expression: str, zone: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        cron.validate(expression, zone, NOW)
    assert caught.value.details["field"] == field


def test_ticks_follow_the_zone_across_dst() -> None:
    schedule = cron.parse("30 9 * * *", "Europe/Madrid")
    start = ms("2026-03-28 00:00:00", "Europe/Madrid")
    ticks = schedule.ticks(start, start + 3 * 86_400_000, 10)
    assert [local(t, "Europe/Madrid") for t in ticks] == [
        "2026-03-28 09:30:00+0100", "2026-03-29 09:30:00+0200", "2026-03-30 09:30:00+0200"]
    assert ticks[1] - ticks[0] == 23 * 3600 * 1000, "the night the clocks go forward is an hour short"


def test_nothing_due_before_the_first_tick_then_exactly_that_tick() -> None:
    schedule = cron.parse("* * * * *", "UTC")
    cursor = ms("2026-03-27 12:00:10")
    assert cron.due(schedule, cursor, ms("2026-03-27 12:00:59"), "one") is None
    due = cron.due(schedule, cursor, ms("2026-03-27 12:01:00.2"), "one")
    assert due == cron.Due(fire=[ms("2026-03-27 12:01:00")], skipped=0, cursor=ms("2026-03-27 12:01:00"))
    # once the cursor is there, the same tick is never due again
    assert cron.due(schedule, due.cursor, ms("2026-03-27 12:01:30"), "one") is None


def test_after_downtime_one_catch_up_run_by_default() -> None:
    schedule = cron.parse("*/10 * * * *", "UTC")
    cursor = ms("2026-03-27 08:00:00")
    now = ms("2026-03-27 09:03:00")  # down for an hour: 08:10 … 09:00 missed
    due = cron.due(schedule, cursor, now, "one")
    assert due == cron.Due(fire=[ms("2026-03-27 09:00:00")], skipped=5, cursor=ms("2026-03-27 09:00:00"))


def test_catch_up_none_skips_missed_ticks_and_all_fires_them_in_batches() -> None:
    schedule = cron.parse("*/10 * * * *", "UTC")
    cursor, now = ms("2026-03-27 08:00:00"), ms("2026-03-27 09:03:00")
    due = cron.due(schedule, cursor, now, "none")
    assert due == cron.Due(fire=[], skipped=6, cursor=ms("2026-03-27 09:00:00"))
    # on time (within the grace), "none" fires as usual
    on_time = cron.due(schedule, cursor, ms("2026-03-27 08:10:05"), "none")
    assert on_time is not None and on_time.fire == [ms("2026-03-27 08:10:00")]
    due = cron.due(schedule, cursor, now, "all")
    assert due is not None and len(due.fire) == 6 and due.fire[0] == ms("2026-03-27 08:10:00")
    every_second = cron.parse("* * * * * *", "UTC")
    first = cron.due(every_second, cursor, cursor + 3600_000, "all")
    assert first is not None and len(first.fire) == cron.MAX_BATCH and first.cursor == cursor + cron.MAX_BATCH * 1000
    then = cron.due(every_second, first.cursor, cursor + 3600_000, "all")
    assert then is not None and then.fire[0] == first.cursor + 1000, "the next call goes on where the last stopped"


def test_a_huge_gap_is_counted_not_enumerated() -> None:
    schedule = cron.parse("* * * * * *", "UTC")
    cursor = ms("2026-01-01 00:00:00")
    due = cron.due(schedule, cursor, cursor + 30 * 86_400_000, "one")
    assert due is not None and due.fire == [cursor + 30 * 86_400_000] and due.skipped == cron.MAX_COUNTED


def test_iso_tick_is_local_time() -> None:
    assert cron.iso_tick(ms("2026-07-01 07:00:00"), "Europe/Madrid") == "2026-07-01T09:00:00+02:00"
    assert datetime.fromisoformat(cron.iso_tick(0, "UTC")) == datetime(1970, 1, 1, tzinfo=UTC)
