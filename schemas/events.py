"""Domain events on the wire: CloudEvents 1.0 JSON (CONTRACT §5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

EVENT_SOURCE = "care-plan-service"


class CloudEvent(BaseModel):
    """One event. `id` doubles as the Nats-Msg-Id, so a consumer (and the stream) can drop duplicates."""

    model_config = ConfigDict(frozen=True)

    specversion: str = "1.0"
    id: str
    source: str = EVENT_SOURCE
    type: str
    subject: str
    time: datetime
    datacontenttype: str = "application/json"
    tenantid: str
    correlationid: str | None = None
    causationid: str
    resourceversion: int | None = None
    # CloudEvents distributed-tracing extension: the trace of the command that caused it (CONTRACT §12).
    traceparent: str | None = None
    tracestate: str | None = None
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        body = self.model_dump(mode="json", exclude_none=True)
        return orjson.dumps(body)


def event_subject(tenant_id: str, event_name: str) -> str:
    """`careplan.evt.<tenant>.<resource>.<event>` for an event named `<resource>.<event>`."""
    return f"careplan.evt.{tenant_id}.{event_name}"


def audit_subject(tenant_id: str) -> str:
    return f"careplan.audit.{tenant_id}"
