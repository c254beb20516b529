"""Spans of a command's way through the service (CONTRACT §12), through the OpenTelemetry API alone: with
no SDK configured (service.tracing) every span here is a no-op. Attribute names after OpenTelemetry's
semantic conventions for messaging (NATS); ours are under `careplan.`. No patient data is ever an
attribute: subjects, ids and outcomes only."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER = trace.get_tracer("care-plan-service")
TRACE_CONTEXT = TraceContextTextMapPropagator()  # W3C, whatever else OTEL_PROPAGATORS adds (baggage)


def context_from(headers: Mapping[str, str]) -> Context:
    """The caller's trace (`traceparent`, `tracestate`), or a new one when it sent none. Header names
    are matched whatever their case (HTTP's are case-insensitive; a proxy may send `Traceparent`)."""
    return propagate.extract({name.lower(): value for name, value in headers.items()})


def carry_on(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """`traceparent` (and `tracestate`) of the current span into an outgoing request's headers."""
    propagate.inject(headers)
    return headers


def trace_context() -> dict[str, str]:
    """The current span's W3C `traceparent` (and `tracestate`), when there is a valid one; {} otherwise
    (no SDK, or no span): what an event carries as its CloudEvents tracing extension."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    TRACE_CONTEXT.inject(carrier)
    return carrier


def links_to(traceparent: str | None) -> list[Link]:
    """A link to the span a stored `traceparent` names (a command that wrote an outbox row or started a
    rollout), when there is a valid one: work done later for it belongs to a trace of its own."""
    if not traceparent:
        return []
    linked = trace.get_current_span(TRACE_CONTEXT.extract({"traceparent": traceparent})).get_span_context()
    return [Link(linked)] if linked.is_valid else []


def nats_attributes(operation: str, subject: str, message_id: str | None = None) -> dict[str, str]:
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes
