"""Projector into MariaDB and replay, on generated event histories (the projector tests' own generator)."""

from __future__ import annotations

from bench.common import Result
from shared.infra.settings import PROJECTOR_BATCH
from tests.projector.bench import main as project_and_replay


async def projector_throughput(events: int = 60_000) -> list[Result]:
    projected, replayed = await project_and_replay("mysql", events, 4, PROJECTOR_BATCH)
    return [
        Result(f"projector into MariaDB, {events} events", projected, "events/s", ">= 15,000", "4 partitions"),
        Result(f"replay into MariaDB, {events} events", replayed, "events/s", ">= 30,000", "archive + stream tail"),
    ]
