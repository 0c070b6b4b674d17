"""Cron without surprises: six and seven fields read in Quartz order (seconds first), numeric Quartz weekdays
refused, the next five fire times in every schedule trigger's response, and DST changes that neither double
nor lose a daily run (the scheduler driven with explicit ``now`` values)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from redis.asyncio import Redis

from services.trigger.schedule import Scheduler
from shared.domain.triggers import cron
from shared.domain.triggers.firing import Firer
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import ExecutionQueued, TriggerFired
from tests.api.support import TenantHandle, create_workflow
from tests.trigger.conftest import events_of, make_trigger

MADRID = ZoneInfo("Europe/Madrid")
STEP = 5 * 60_000


def madrid(text: str, fold: int = 0) -> int:
    """Epoch ms of a Madrid wall time (``fold=1``: its second occurrence when the clocks go back)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=MADRID, fold=fold).timestamp() * 1000)


def spacing(times: list[str]) -> set[timedelta]:
    parsed = [datetime.fromisoformat(t) for t in times]
    return {b - a for a, b in zip(parsed, parsed[1:], strict=False)}


# --- the six-field rule ------------------------------------------------------------------------------------------


async def test_six_fields_are_quartz_order_seconds_first(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    # Before: croniter read the 6th field as seconds, so this fired every second of every 10th minute.
    body = await make_trigger(client, tenant, "schedule", cron="*/10 * * * * *")
    assert len(body["next_fire_times"]) == 5
    assert spacing(body["next_fire_times"]) == {timedelta(seconds=10)}
    assert body["config"]["cron"] == "*/10 * * * * *", "kept as written"
    daily = await make_trigger(client, tenant, "schedule", cron="0 30 8 ? * MON-FRI", timezone="Europe/Madrid")
    for tick in daily["next_fire_times"]:
        local = datetime.fromisoformat(tick)
        assert local.strftime("%H:%M:%S") == "08:30:00" and local.weekday() < 5


async def test_numeric_weekday_in_quartz_form_is_a_clear_422(
    client: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    for expression, words in (
        ("0 0 9 ? * 2-6", ["Quartz", "MON-FRI", "Sunday 1"]),
        ("0 0 9 * * * * *", ["5 fields", "seconds first"]),
    ):
        r = await client.post("/api/triggers", headers=tenant.headers, json={
            "workflow_id": wf["id"], "trigger_type": "schedule", "config": {"cron": expression}})
        assert r.status_code == 422, r.text
        error: dict[str, Any] = r.json()["error"]
        assert error["field"] == "config.cron"
        assert all(w in error["message"] for w in words), error["message"]


# --- next fire times ---------------------------------------------------------------------------------------------


async def test_next_five_fire_times_on_create_read_replace(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    body = await make_trigger(client, tenant, "schedule", cron="0 9 * * *", timezone="Europe/Madrid")
    times = body["next_fire_times"]
    assert len(times) == 5 and times == sorted(times, key=datetime.fromisoformat)
    assert all(t[11:19] == "09:00:00" and t[19:] in ("+01:00", "+02:00") for t in times), "local time, local offset"
    url = f"/api/triggers/{body['id']}"
    replace = {"workflow_id": body["workflow_id"], "trigger_type": "schedule",
               "config": {"cron": "0 18 * * *", "timezone": "America/New_York"}}
    r = await client.put(url, headers=tenant.headers, json=replace)
    assert r.status_code == 200
    assert all(t[11:19] == "18:00:00" and t[19:] in ("-05:00", "-04:00") for t in r.json()["next_fire_times"])
    r = await client.put(url, headers=tenant.headers, json={**replace, "enabled": False})
    assert r.json()["next_fire_times"] == [], "a disabled trigger fires never"
    webhook = await make_trigger(client, tenant, "webhook")
    assert webhook["next_fire_times"] is None, "only schedules have fire times"


def test_next_fire_times_stop_with_a_year_field() -> None:
    schedule = cron.parse("0 0 12 1 JAN ? 2027-2028", "UTC")
    assert schedule.upcoming(madrid("2026-06-01 00:00")) == ["2027-01-01T12:00:00+00:00",
                                                             "2028-01-01T12:00:00+00:00"]


# --- DST ---------------------------------------------------------------------------------------------------------


async def drive_night(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings,
                      firer: Firer, expression: str, day: str) -> list[int]:
    """A Madrid schedule with its cursor at midnight of ``day``, the scheduler called every 5 min until 05:00
    real time; the ticks fired."""
    trigger = await make_trigger(client, tenant, "schedule", cron=expression, timezone="Europe/Madrid",
                                 overlap="allow")  # "skip" would hide a second run as trigger.skipped
    midnight = madrid(f"{day} 00:00")
    await redis.hset(keys.trigger(tenant.partition, trigger["id"]), "cursor", str(midnight))
    scheduler = Scheduler(redis, firer, settings)
    for now in range(midnight + STEP, midnight + 6 * 3600_000, STEP):
        await scheduler.tick(now + 200)
    return [e.source["tick"] for e in await events_of(redis, tenant.partition, "trigger.fired")
            if isinstance(e, TriggerFired)]


async def test_autumn_fall_back_fires_a_daily_0230_once(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer
) -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice. Before the fix: fired at both.
    ticks = await drive_night(client, tenant, redis, settings, firer, "30 2 * * *", "2026-10-25")
    assert ticks == [madrid("2026-10-25 02:30", fold=0)], "once, the first time the clock shows 02:30"
    queued = [e for e in await events_of(redis, tenant.partition, "execution.queued")
              if isinstance(e, ExecutionQueued)]
    assert [e.params["scheduled_at"] for e in queued] == ["2026-10-25T02:30:00+02:00"]


async def test_spring_forward_runs_the_skipped_0230_at_0300_once(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, firer: Firer
) -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST, so 02:30 never happens: it runs when the gap ends.
    ticks = await drive_night(client, tenant, redis, settings, firer, "30 2 * * *", "2026-03-29")
    assert ticks == [madrid("2026-03-29 03:00")]
    queued = [e for e in await events_of(redis, tenant.partition, "execution.queued")
              if isinstance(e, ExecutionQueued)]
    assert [e.params["scheduled_at"] for e in queued] == ["2026-03-29T03:00:00+02:00"]


def test_interval_schedules_across_both_changes_follow_the_wall_clock() -> None:
    schedule = cron.parse("*/30 * * * *", "Europe/Madrid")
    local = [cron.iso_tick(t, "Europe/Madrid")[11:]
             for t in schedule.ticks(madrid("2026-10-25 01:00"), madrid("2026-10-25 03:30"), 20)]
    # The repeated hour's wall times fire once: no second 02:00 or 02:30 (CET).
    assert local == ["01:30:00+02:00", "02:00:00+02:00", "02:30:00+02:00", "03:00:00+01:00", "03:30:00+01:00"]
    spring = [cron.iso_tick(t, "Europe/Madrid")[11:]
              for t in schedule.ticks(madrid("2026-03-29 01:00"), madrid("2026-03-29 04:00"), 20)]
    # 02:00 and 02:30 do not exist: they and 03:00 become one run at 03:00.
    assert spring == ["01:30:00+01:00", "03:00:00+02:00", "03:30:00+02:00", "04:00:00+02:00"]


def test_a_restart_in_the_repeated_hour_does_not_fire_it_again() -> None:
    schedule = cron.parse("30 2 * * *", "Europe/Madrid")
    first, second = madrid("2026-10-25 02:30", fold=0), madrid("2026-10-25 02:45", fold=1)
    assert schedule.last_at_or_before(second) == first
    assert cron.due(schedule, first, second, "one") is None
    missed = cron.due(schedule, madrid("2026-10-24 12:00"), second, "one")
    assert missed == cron.Due(fire=[first], skipped=0, cursor=first), "found late, but only once"
