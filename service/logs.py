"""Process-wide logging: one JSON object per line (CONTRACT §7), or plain text for a person at a terminal.
A record's `extra` fields become top-level keys, so `log.info("command", extra={"tenant_id": …})` is
searchable as such in the log pipeline."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.orjson import OrjsonFormatter

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


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Everything to stderr, the orchestrator's log collector reads it; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
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
