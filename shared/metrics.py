"""The one Prometheus exporter: a ``prometheus_client`` registry per process, rendered for ``GET /metrics``.

Used by the API's ``/metrics`` (``services/api/metrics.py`` adds the projection's figures and the feed's
counters) and by the metrics port of the other services (``shared/metrics_server.py``, which adds what each
service counts). Both export the same deployment families read from Redis by ``shared/inspection.py``, with
the same names and labels, plus ``prometheus_client``'s process collectors (CPU, memory, file descriptors, GC).

Naming follows Prometheus: ``orq_`` prefix, base units in the name (``_seconds``, ``_bytes``, ``_ratio``),
counters end in ``_total``; stream families carry the same labels everywhere (``partition``, and ``stream`` and
``group`` where they apply; ``prometheus_client`` writes label names sorted).
Families are described as small :class:`Metric` values read when scraped (a service's counters live on its
own objects), and turned into ``prometheus_client`` families here only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import Metric as Family
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from redis.asyncio import Redis

from shared.inspection import PartitionStatus, partition_status

Labels = tuple[tuple[str, str], ...]
# The text format every Prometheus reads (0.0.4), whatever the client library's newest default is.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Stream families are read from Redis at most this often, however often (and however many) Prometheus scrape.
STREAMS_CACHE_S = 2.0


@dataclass(frozen=True, slots=True)
class Metric:
    """One family: name, type (``gauge``/``counter``), help, and samples by label set (same label names each)."""

    name: str
    type: str
    help: str
    samples: Mapping[Labels, float]


Collect = Callable[[], Iterable[Metric]]


def counter(name: str, help_text: str, value: float) -> Metric:
    """A single unlabelled counter (``name`` ends in ``_total``)."""
    return Metric(name, "counter", help_text, {(): float(value)})


def gauge(name: str, help_text: str, value: float | None) -> Metric:
    """A single unlabelled gauge; with ``value`` None, the family without a sample (nothing to tell yet)."""
    return Metric(name, "gauge", help_text, {} if value is None else {(): float(value)})


def _family(metric: Metric) -> Family:
    names = [k for k, _ in next(iter(metric.samples), ())]
    family: GaugeMetricFamily | CounterMetricFamily
    if metric.type == "counter":
        family = CounterMetricFamily(metric.name, metric.help, labels=names)
    else:
        family = GaugeMetricFamily(metric.name, metric.help, labels=names)
    for labels, value in metric.samples.items():
        family.add_metric([v for _, v in labels], value)
    return family


class _Families:
    """A ``prometheus_client`` collector of the families ``collect`` returns at each scrape."""

    def __init__(self, collect: Collect) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Family]:
        return (_family(m) for m in self._collect())


class Exporter:
    """One process's registry: the process collectors, the families of ``collects`` (read at each scrape),
    and the families handed to :meth:`render` (figures a scrape read asynchronously just before)."""

    def __init__(self, *collects: Collect, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._scraped: list[Metric] = []
        self.registry.register(_Families(lambda: [*self._scraped, *(m for c in collects for m in c())]))

    def render(self, scraped: Iterable[Metric] = ()) -> bytes:
        """The exposition. No await between taking ``scraped`` and rendering: concurrent scrapes cannot mix."""
        self._scraped = list(scraped)
        try:
            return generate_latest(self.registry)
        finally:
            self._scraped = []


def render(metrics: Iterable[Metric]) -> str:
    """``metrics`` alone in the text format (no process collectors)."""
    return Exporter(process=False).render(metrics).decode()


def stream_metrics(statuses: Iterable[PartitionStatus]) -> list[Metric]:
    """The deployment's stream families (the same on every instance: aggregate them with ``max``)."""
    lag: dict[Labels, float] = {}
    pending: dict[Labels, float] = {}
    length: dict[Labels, float] = {}
    dlq: dict[Labels, float] = {}
    running: dict[Labels, float] = {}
    backlog: dict[Labels, float] = {}
    for status in statuses:
        p = ("partition", str(status.partition))
        for stream, n in (("log", status.log_length), ("work", status.work_length), ("notify", status.notify_length)):
            length[(p, ("stream", stream))] = n
        dlq[(p,)] = status.dlq
        running[(p,)] = status.running
        backlog[(p,)] = status.backlog
        for group in status.groups:
            labels = (p, ("stream", group.stream), ("group", group.name))
            lag[labels] = group.lag
            pending[labels] = group.pending
    return [
        Metric("orq_consumer_group_lag", "gauge", "Entries not yet delivered to the consumer group.", lag),
        Metric("orq_consumer_group_pending", "gauge", "Entries delivered to the group and not acknowledged yet.",
               pending),
        Metric("orq_stream_length", "gauge", "Entries in the stream (work: the ten priority streams).", length),
        Metric("orq_dlq_size", "gauge", "Entries in the dead-letter stream.", dlq),
        Metric("orq_running_executions", "gauge", "Executions holding an executor slot now, deployment-wide.",
               running),
        Metric("orq_backlog", "gauge", "Executions waiting in the fair-share backlogs.", backlog),
    ]


class StreamMetrics:
    """The stream families, read from Redis at most every ``STREAMS_CACHE_S`` (a scrape storm costs one read)."""

    def __init__(self, redis: Redis, partitions: int, ttl_s: float = STREAMS_CACHE_S) -> None:
        self.redis = redis
        self.partitions = partitions
        self._ttl_s = ttl_s
        self._cached: tuple[float, list[Metric]] | None = None

    async def read(self) -> list[Metric]:
        if self._cached is None or time.monotonic() - self._cached[0] > self._ttl_s:
            self._cached = (time.monotonic(), stream_metrics(await partition_status(self.redis, self.partitions)))
        return self._cached[1]
