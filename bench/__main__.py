"""``make bench``: run every benchmark and print one table."""

from __future__ import annotations

import asyncio
import sys

from bench.api import end_to_end
from bench.api_workers import api_workers
from bench.cluster import cluster_rows
from bench.common import Result, print_table
from bench.executor import dispatch_by_tenants, executor_throughput
from bench.feed import fanout_latency
from bench.latency import latency_rows
from bench.memory import state_retention
from bench.peers.bullmq import bullmq_peer
from bench.projector import projector_throughput
from bench.queues import queue_throughput
from bench.reference import bare_consumer
from bench.robots import robot_round_trip


async def main(selected: set[str]) -> None:
    results: list[Result] = []
    # The BullMQ peer runs between the executor and latency suites it is compared with: on a shared machine,
    # the closer in time two measurements are, the more their ratio means.
    suites = {"reference": bare_consumer, "e2e": end_to_end, "executor": executor_throughput, "bullmq": bullmq_peer,
              "latency": latency_rows, "fairness": dispatch_by_tenants, "queues": queue_throughput,
              "projector": projector_throughput, "feed": fanout_latency,
              "memory": state_retention, "robots": robot_round_trip, "workers": api_workers,
              "cluster": cluster_rows}
    for name, suite in suites.items():
        if not selected or name in selected:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results += await suite()
    print_table(results)


if __name__ == "__main__":
    asyncio.run(main(set(sys.argv[1:])))
