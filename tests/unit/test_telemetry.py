"""The command observer and the JSON log format, without a server: what is counted, what is logged, and
that a scrape survives a gauge it cannot refresh."""

from __future__ import annotations

import logging

import orjson
import pytest

from handlers.ports import CommandObservation
from service.logs import json_formatter
from service.telemetry import CommandTelemetry, ServiceMetrics


def observation(**changes: object) -> CommandObservation:
    values: dict[str, object] = {
        "transport": "nats",
        "command": "goal.add",
        "command_id": "c1",
        "tenant_id": "t1",
        "correlation_id": "r1",
        "outcome": "ok",
        "status": 201,
        "duration_s": 0.0123,
        "replayed": False,
    } | changes
    return CommandObservation(**values)  # type: ignore[arg-type]


def test_an_answered_command_is_counted_timed_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServiceMetrics()
    caplog.set_level(logging.INFO, logger="careplan.commands")
    CommandTelemetry(metrics).command_processed(observation())
    labels = {"command": "goal.add", "transport": "nats", "outcome": "ok"}
    assert metrics.registry.get_sample_value("careplan_commands_total", labels) == 1
    count = metrics.registry.get_sample_value(
        "careplan_command_duration_seconds_count", {"command": "goal.add", "transport": "nats"}
    )
    assert count == 1
    (record,) = [r for r in caplog.records if r.name == "careplan.commands"]
    assert record.levelno == logging.INFO
    assert (record.__dict__["tenant_id"], record.__dict__["duration_ms"]) == ("t1", 12.3)


def test_a_retried_delivery_is_counted_but_left_to_the_consumer_to_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServiceMetrics()
    caplog.set_level(logging.DEBUG, logger="careplan.commands")
    CommandTelemetry(metrics).command_processed(observation(outcome="unavailable", status=503))
    labels = {"command": "goal.add", "transport": "nats", "outcome": "unavailable"}
    assert metrics.registry.get_sample_value("careplan_commands_total", labels) == 1
    assert not [r for r in caplog.records if r.name == "careplan.commands"]


def test_internal_errors_log_at_error_and_replays_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServiceMetrics()
    caplog.set_level(logging.INFO, logger="careplan.commands")
    telemetry = CommandTelemetry(metrics)
    telemetry.command_processed(observation(outcome="INTERNAL", status=500))
    telemetry.command_processed(observation(replayed=True, transport="http"))
    assert [r.levelno for r in caplog.records if r.name == "careplan.commands"] == [
        logging.ERROR,
        logging.INFO,
    ]
    assert metrics.registry.get_sample_value("careplan_command_replays_total", {"transport": "http"}) == 1


async def test_a_scrape_answers_when_a_gauge_cannot_be_refreshed() -> None:
    metrics = ServiceMetrics()

    async def broken() -> None:
        raise ConnectionError("database down")

    async def working() -> None:
        metrics.outbox_backlog.set(7)

    metrics.on_scrape("dlq", broken)
    metrics.on_scrape("outbox", working)
    body, content_type = await metrics.exposition(None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"careplan_outbox_backlog 7.0" in body
    assert metrics.registry.get_sample_value("careplan_scrape_errors_total", {"source": "dlq"}) == 1
    openmetrics, kind = await metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text")
    assert openmetrics.endswith(b"# EOF\n")


def test_a_json_log_line_has_the_time_level_logger_message_and_the_records_fields() -> None:
    record = logging.LogRecord("careplan.commands", logging.INFO, __file__, 1, "command %s ok", ("x",), None)
    record.__dict__.update({"tenant_id": "t1", "command_id": "c1", "duration_ms": 1.5})
    line = json_formatter().format(record)
    assert "\n" not in line
    document = orjson.loads(line)
    assert document["message"] == "command x ok"
    assert (document["level"], document["logger"], document["service"]) == (
        "INFO",
        "careplan.commands",
        "care-plan-service",
    )
    assert (document["tenant_id"], document["command_id"], document["duration_ms"]) == ("t1", "c1", 1.5)
    assert document["time"].endswith("+00:00")
