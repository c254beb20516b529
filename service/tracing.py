"""OpenTelemetry for `careplan serve` (CONTRACT §12), configured by the standard variables:

- `OTEL_TRACES_EXPORTER`: `otlp` (OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, as the exporter reads them), `console` (stdout), or `none`;
- unset: `otlp` when an OTLP endpoint is set, else `none` — nothing configured exports nothing, and no
  tracer provider is installed at all, so every span is the API's no-op and costs next to nothing;
- `OTEL_SERVICE_NAME` (default `care-plan-service`) and `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_PROPAGATORS`
  (default W3C `tracecontext,baggage`); the batch processor's `OTEL_BSP_*`.

The code that makes spans uses the API only (`opentelemetry.trace`); this module is the one place that
chooses the SDK, its exporter and its resource."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from service.build_info import build_info

log = logging.getLogger(__name__)
EXPORTERS = ("otlp", "console", "none")


class TracingRefused(ValueError):
    """An OTEL_TRACES_EXPORTER the service does not know: refused at start, not ignored."""


def exporter_name(environ: Mapping[str, str]) -> str:
    chosen = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not chosen:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return "otlp" if any(environ.get(name) for name in endpoints) else "none"
    if chosen not in EXPORTERS:
        raise TracingRefused(f"OTEL_TRACES_EXPORTER={chosen!r}: this service exports {', '.join(EXPORTERS)}")
    return chosen


def configure_tracing(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Install the SDK's tracer provider as the process's, with the exporter asked for; None (and nothing
    installed) when no exporter is."""
    name = exporter_name(environ)
    if name == "none":
        return None
    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create(
        {
            SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or "care-plan-service",
            SERVICE_VERSION: build_info().version,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans (%s)", name)
    return provider
