"""Schedule triggers: fire each cron tick once, however many trigger services run.

Every instance looks at every live schedule trigger each poll (``ORQ_TRIGGER_POLL_SECONDS``) and asks
:func:`shared.domain.triggers.cron.due` what to do from the trigger's cursor (the last tick handled). A tick is
fired with two claims in the firing unit: ``SET`` of the tick's key (absent before) and a compare-and-set of the cursor
from the value read to the tick. Two instances racing for a tick both build the unit; Redis applies one,
refuses the other. The overlap policy ``skip`` (default) records ``trigger.skipped`` instead of starting a
run while the previous run of the trigger is queued, running or retrying.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio import Redis

from services.trigger.registry import config_of, live_triggers
from shared.domain.triggers import cron
from shared.domain.triggers.definitions import ScheduleConfig, TriggerState
from shared.domain.triggers.firing import Claim, Fired, Firer, NotFired, Once, Request, Swap
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.service import metrics

log = logging.getLogger(__name__)

TICK_CLAIM_TTL_S = 7 * 24 * 3600


class Scheduler:
    """Fires the due ticks of every schedule trigger; ``clock`` is injectable for tests."""

    def __init__(self, redis: Redis, firer: Firer, settings: Settings, clock: Callable[[], int] = now_ms) -> None:
        self.redis = redis
        self.firer = firer
        self.settings = settings
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(self.clock())
            except Exception:  # a loop's top level: log, wait, go on
                log.exception("scheduler pass failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.trigger_poll_s)

    async def tick(self, now: int) -> int:
        """One pass over every live schedule trigger at ``now``; returns how many runs it started."""
        fired = 0
        for trigger in await live_triggers(self.redis, self.settings.partitions, "schedule"):
            fired += await self.handle(trigger, now)
        return fired

    async def handle(self, trigger: TriggerState, now: int) -> int:
        config = config_of(trigger, ScheduleConfig)
        if config is None:
            return 0
        schedule = cron.parse(config.cron, config.timezone)
        due = cron.due(schedule, trigger.cursor, now, config.catch_up)
        if due is None:
            return 0
        p = trigger.partition
        cursor = trigger.cursor
        if not due.fire:  # every due tick was missed and the policy is ``none``: move on, say so
            claims: list[Claim] = [Swap(keys.trigger(p, trigger.id), "cursor", str(cursor), str(due.cursor))]
            request = Request(params={}, source={"tick": due.cursor}, claims=claims)
            await self.firer.skip(trigger, request, "missed", now, ticks=due.skipped)
            return 0
        fired = 0
        for tick in due.fire:
            claims = [
                Once(keys.trigger_claim(p, trigger.id, f"tick:{tick}"), TICK_CLAIM_TTL_S),
                Swap(keys.trigger(p, trigger.id), "cursor", str(cursor), str(tick)),
            ]
            source: dict[str, int] = {"tick": tick}
            if due.skipped:
                source["missed"] = due.skipped
            request = Request(
                params={"scheduled_at": cron.iso_tick(tick, config.timezone)},
                source=source,
                claims=claims,
                skip_if_running=config.overlap == "skip",
            )
            outcome = await self.firer.fire(p, trigger.id, request, now)
            if isinstance(outcome, NotFired):  # another instance handled it, or the trigger changed: next pass
                break
            if isinstance(outcome, Fired):
                metrics.trigger_fired(outcome.trigger.type)
                fired += 1
                log.info("schedule trigger %s fired for tick %d: execution %s", trigger.id, tick,
                         outcome.execution_id, extra={"trigger_id": trigger.id})
            cursor = tick
        return fired
