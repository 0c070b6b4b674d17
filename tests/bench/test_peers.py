"""The peer half of ``make bench``: ratio columns read the same way for every row, and a machine without
Node still gets its table (peer rows skipped, the reason on stderr)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Result, peer_ratio, print_table
from bench.peers import bullmq

FIGURES = {
    "versions": {"bullmq": "6.7.0", "node": "20.20.2"},
    "processing": {"jobs": 20000, "concurrency": 50, "seconds": 1.0, "jobs_per_s": 20000.0,
                   "redis_commands_per_job": 24.0},
    "latency": [{"rate": 500, "seconds": 10, "jobs": 5000, "p50_ms": 0.5, "p99_ms": 4.0}],
}


def test_ratio_above_one_means_orquesta_is_better_for_rates_and_latencies() -> None:
    peer = Result("peer rate", 10_000, "jobs/s")
    assert peer_ratio(Result("ours", 15_000, "exec/s", peer="peer rate"), peer) == 1.5
    slow_peer = Result("peer p99", 4.0, "ms")
    assert peer_ratio(Result("ours", 2.0, "ms", peer="peer p99"), slow_peer) == 2.0
    assert peer_ratio(Result("ours", 0.0, "ms", peer="peer p99"), slow_peer) is None


def test_table_prints_each_row_against_its_peer_row(capsys: pytest.CaptureFixture[str]) -> None:
    peers = bullmq.rows(FIGURES)
    ours = [Result("executor", 30_000, "exec/s", peer=bullmq.PROCESSING),
            Result("p99 at 500/s", 2.0, "ms", peer=bullmq.latency_row("p99", 500)),
            Result("p99 at 5000/s", 9.0, "ms", peer=bullmq.latency_row("p99", 5000))]
    print_table(peers + ours)
    lines = {line.split("|")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "| 1.50x" in lines["executor"]
    assert "| 2.00x" in lines["p99 at 500/s"]
    assert "no peer row" in lines["p99 at 5000/s"]
    assert "BullMQ redis commands per job (worker side)" in lines


async def test_without_node_the_peer_suite_returns_no_rows_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no node, no npm
    assert await bullmq.bullmq_peer() == []
    assert "bullmq: peer rows skipped: node or npm not found on PATH" in capsys.readouterr().err
