"""``make bench``: run every benchmark and print one table."""

from __future__ import annotations

import asyncio
import sys

from bench.api import end_to_end
from bench.common import Result, print_table
from bench.executor import dispatch_by_tenants, executor_throughput
from bench.feed import fanout_latency
from bench.latency import enqueue_to_start
from bench.memory import state_retention
from bench.projector import projector_throughput
from bench.queues import queue_throughput
from bench.reference import bare_consumer


async def main(selected: set[str]) -> None:
    results: list[Result] = []
    suites = {"reference": bare_consumer, "e2e": end_to_end, "executor": executor_throughput,
              "fairness": dispatch_by_tenants, "latency": enqueue_to_start, "queues": queue_throughput,
              "projector": projector_throughput, "feed": fanout_latency,
              "memory": state_retention}
    for name, suite in suites.items():
        if not selected or name in selected:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results += await suite()
    print_table(results)


if __name__ == "__main__":
    asyncio.run(main(set(sys.argv[1:])))
