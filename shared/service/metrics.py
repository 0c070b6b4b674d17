"""The one Prometheus exporter: a ``prometheus_client`` registry per process, rendered for ``GET /metrics``.

Used by the API's ``/metrics`` (``services/api/metrics.py`` adds the projection's figures and the feed's
counters) and by the metrics port of the other services (``shared/service/metrics_port.py``, which adds what each
service counts). Both export the same deployment families read from Redis by ``shared/log/inspection.py``, with
the same names and labels, plus ``prometheus_client``'s process collectors (CPU, memory, file descriptors, GC).

Naming follows Prometheus: ``orq_`` prefix, base units in the name (``_seconds``, ``_bytes``, ``_ratio``),
counters end in ``_total``; stream families carry the same labels everywhere (``partition``, and ``stream`` and
``group`` where they apply; ``prometheus_client`` writes label names sorted).
Families are described as small :class:`Metric` values read when scraped (a service's counters live on its
own objects), and turned into ``prometheus_client`` families here only.

What *happens* (an execution ends, a step ends, a retry is scheduled, a trigger fires, a webhook call is refused)
is counted where it is committed, in this process, by the counters and histograms of :class:`Happenings` (every
exporter of the process includes them): ``observe(unit)`` after a unit is applied, ``trigger_fired`` and
``webhook_refused`` at their call sites. Labels are bounded: outcomes, trigger types and refusal reasons, never
an execution id, and a tenant id only when the operator turns it on (``ORQ_METRICS_TENANT_LABEL``, at most
``MAX_TENANT_LABELS`` values per process). Prometheus' ``rate()``/``increase()`` and ``histogram_quantile()`` aggregate
them across instances and windows, which the API's windowed gauges cannot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client import Metric as Family
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from redis.asyncio import Redis

from shared.log.commit import Unit
from shared.log.events import (
    EventBase,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionRetrying,
    StepCompleted,
    StepFailed,
)
from shared.log.inspection import PartitionStatus, partition_status

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
        self.registry.register(_Happenings())
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


# --- What happens: counters and histograms, one set per process ---------------------------------------------

# ``*_created`` series double every counter and histogram and no dashboard or alert here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
# Seconds: a step of a few ms up to an execution of hours.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
# With ORQ_METRICS_TENANT_LABEL on, each tenant adds ~90 series to a process (4 execution and 3 step outcomes,
# a 20-series histogram per step outcome and one for executions, retries, dead-letter reasons). Tenants are
# created through the API, so their number is not the operator's to bound: past this many distinct values in
# one process (~90k series, what one Prometheus still scrapes comfortably), new tenants are counted under
# ``tenant="other"``, and those already seen keep their own series.
MAX_TENANT_LABELS = 1000
OTHER_TENANT = "other"
# Which event ends an execution how (ExecutionFailed with dead_lettered is counted by its ExecutionDeadLettered).
_ENDINGS = (ExecutionCompleted, ExecutionFailed, ExecutionDeadLettered, ExecutionCancelled, ExecutionRetrying,
            StepCompleted, StepFailed)


class TenantLabels:
    """The ``tenant`` label values of one process: the first ``limit`` tenants by id, any later one as ``other``."""

    def __init__(self, limit: int = MAX_TENANT_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # as safe across threads as the prometheus_client metrics it labels

    def __call__(self, tenant_id: str) -> str:
        with self._lock:
            if tenant_id in self._seen:
                return tenant_id
            if len(self._seen) < self.limit:
                self._seen.add(tenant_id)
                return tenant_id
        return OTHER_TENANT


class Happenings:
    """The process's counters and histograms of what happens, with a ``tenant`` label or (default) without.

    The label names of a family are fixed when it is made, so the choice is made once, at start-up
    (:func:`configure_happenings`)."""

    def __init__(self, tenant_label: bool = False, max_tenants: int = MAX_TENANT_LABELS) -> None:
        self.tenant_label = tenant_label
        self.tenants = TenantLabels(max_tenants)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry()
        r, t = self.registry, ["tenant"] if tenant_label else []
        self.executions = Counter("orq_executions_total", "Executions ended, by outcome (completed, failed, "
                                  "cancelled, dead_lettered; a dead-lettered execution counts once, as "
                                  "dead_lettered).", ["outcome", *t], registry=r)
        self.steps = Counter("orq_steps_total", "Steps ended, by outcome (completed, failed, continued: failed and "
                             "let pass).", ["outcome", *t], registry=r)
        self.retries = Counter("orq_retries_total", "Retries scheduled (an attempt failed and another one will "
                               "follow).", t, registry=r)
        self.dead_letters = Counter("orq_dead_letters_total", "Executions put in the dead-letter queue, by reason.",
                                    ["reason", *t], registry=r)
        self.triggers_fired = Counter("orq_triggers_fired_total", "Triggers fired (an execution queued), by trigger "
                                      "type.", ["type"], registry=r)
        self.webhook_refused = Counter("orq_webhook_refused_total", "Webhook calls refused, by reason (unauthorized: "
                                       "bad, stale or replayed signature; rate_limited).", ["reason"], registry=r)
        self.execution_duration = Histogram("orq_execution_duration_seconds", "Duration of completed executions "
                                            "(first start to completion, retries included).", t,
                                            buckets=DURATION_BUCKETS, registry=r)
        self.step_duration = Histogram("orq_step_duration_seconds", "Duration of steps run by an executor, by "
                                       "outcome.", ["outcome", *t], buckets=DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("orq_execution_queue_wait_seconds", "From queued to the first start on an "
                                    "executor.", buckets=DURATION_BUCKETS, registry=r)

    def observe_event(self, event: EventBase) -> None:
        """Count ``event`` if it ends an execution or a step, or schedules a retry."""
        t = (self.tenants(event.tenant_id),) if self.tenant_label else ()
        match event:
            case ExecutionCompleted(duration_ms=duration_ms):
                self._of(self.executions, "completed", *t).inc()
                (self._of(self.execution_duration, *t) if t else self.execution_duration).observe(duration_ms / 1000)
            case ExecutionFailed(dead_lettered=False):
                self._of(self.executions, "failed", *t).inc()
            case ExecutionDeadLettered(reason=reason):
                self._of(self.executions, "dead_lettered", *t).inc()
                self._of(self.dead_letters, reason, *t).inc()
            case ExecutionCancelled():
                self._of(self.executions, "cancelled", *t).inc()
            case ExecutionRetrying():
                (self._of(self.retries, *t) if t else self.retries).inc()
            case StepCompleted(duration_ms=duration_ms):
                self._of(self.steps, "completed", *t).inc()
                self._of(self.step_duration, "completed", *t).observe(duration_ms / 1000)
            case StepFailed(duration_ms=duration_ms, continued=continued):
                outcome = "continued" if continued else "failed"
                self._of(self.steps, outcome, *t).inc()
                self._of(self.step_duration, outcome, *t).observe(duration_ms / 1000)

    def _of(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, kept: prometheus_client looks a child up under a lock at every call, on the
        executor's hot path. Bounded like the label values (outcomes, reasons, at most ``max_tenants`` + 1)."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child


_happenings = Happenings()


def configure_happenings(tenant_label: bool) -> Happenings:
    """Give what happens a ``tenant`` label or not (``ORQ_METRICS_TENANT_LABEL``), once at start-up.

    Called by every service's bootstrap and by the API app. The same choice again keeps the counts (``orq dev``
    starts several services in one process); another one starts them afresh, with the new label set."""
    global _happenings
    if _happenings.tenant_label != tenant_label:
        _happenings = Happenings(tenant_label)
    return _happenings


class _Happenings:
    """The process's counters and histograms, collected into each exporter's registry."""

    def collect(self) -> Iterator[Family]:
        return iter(_happenings.registry.collect())


def observe(unit: Unit) -> None:
    """Count what the (applied) ``unit`` ended: call it once the commit returned ``Applied``."""
    for event in unit.events:
        if isinstance(event, _ENDINGS):
            observe_event(event)


def observe_event(event: EventBase) -> None:
    _happenings.observe_event(event)


def queue_wait(queued_ms: int, started_ms: int) -> None:
    """An execution's first start, ``started_ms - queued_ms`` after it was queued."""
    _happenings.queue_wait.observe(max(0, started_ms - queued_ms) / 1000)


def trigger_fired(trigger_type: str) -> None:
    _happenings.triggers_fired.labels(trigger_type).inc()


def webhook_refused(reason: str) -> None:
    _happenings.webhook_refused.labels(reason).inc()
