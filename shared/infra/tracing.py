"""OpenTelemetry traces around API commands, executions and steps, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Without the variable nothing is imported and every span is a no-op costing one attribute check. With it,
spans are batched and exported over OTLP/HTTP (the exporter reads the standard ``OTEL_*`` variables itself).
The tracer provider is process-wide by OpenTelemetry's design, so it is configured once, by the CLI.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

log = logging.getLogger(__name__)


class _State:
    tracer: Any = None
    provider: Any = None


def configure_tracing(endpoint: str, service: str) -> bool:
    """Turn tracing on for this process if ``endpoint`` is set; returns whether it is on."""
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
                    "(pip install 'orquesta[otel]'); tracing stays off")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": f"orquesta-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint))))
    _State.provider = provider
    _State.tracer = provider.get_tracer("orquesta")
    log.info("tracing to %s", endpoint)
    return True


def _traces_url(endpoint: str) -> str:
    # The OTLP/HTTP convention: the base endpoint gets /v1/traces appended.
    return endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"


_NO_SPAN = nullcontext()


def span(name: str, **attributes: str | int | float | bool) -> AbstractContextManager[object]:
    """A span around the block (a shared no-op when tracing is off: it runs per execution and per step); an
    exception marks it as an error."""
    if _State.tracer is None:
        return _NO_SPAN
    started: AbstractContextManager[object] = _State.tracer.start_as_current_span(name, attributes=attributes)
    return started


def shutdown_tracing() -> None:
    """Export what is buffered (at process exit)."""
    if _State.provider is not None:
        _State.provider.shutdown()
        _State.provider = _State.tracer = None
