"""Process-wide logging: one JSON object per line (CONTRACT §7), or plain text for a person at a terminal.
A record's `extra` fields become top-level keys, so `log.info("command", extra={"tenant_id": …})` is
searchable as such in the log pipeline."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

from handlers import log_context

LogFormat = Literal["json", "text"]
SERVICE_NAME = "care-plan-service"


def json_formatter() -> logging.Formatter:
    """`time` (UTC, ISO 8601), `level`, `logger`, `message`, then the record's own fields."""
    return OrjsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"service": SERVICE_NAME},
        timestamp="time",
    )


class ContextFields(logging.Filter):
    """Every record gets the ids of the command or request being handled (handlers.log_context) and of
    the current trace and span, unless it names them itself. Names after OpenTelemetry's log data model:
    `trace_id` and `span_id` in lower-case hex."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in log_context.current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid and getattr(record, "trace_id", None) is None:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Everything to stderr, the orchestrator's log collector reads it; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFields())
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log repeats our own request line without the tenant; asyncio's debug chatter is noise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Alembic's per-run INFO lines ("Context impl PostgresqlImpl", "Will assume transactional DDL") are
    # its plumbing; `careplan migrate` and `careplan dev` say what they do themselves.
    logging.getLogger("alembic").setLevel(logging.WARNING)
