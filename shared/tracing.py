"""OpenTelemetry traces around API commands, executions and steps, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Without the variable nothing is imported and every span is a no-op costing one attribute check. With it,
spans are batched and exported over OTLP/HTTP (the exporter reads the standard ``OTEL_*`` variables itself).
The tracer provider is process-wide by OpenTelemetry's design, so it is configured once, by the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A span around the block (a no-op when tracing is off); an exception marks it as an error."""
    if _State.tracer is None:
        yield
        return
    with _State.tracer.start_as_current_span(name, attributes=attributes):
        yield


def shutdown_tracing() -> None:
    """Export what is buffered (at process exit)."""
    if _State.provider is not None:
        _State.provider.shutdown()
        _State.provider = _State.tracer = None
