"""Operating the service (CONTRACT §7, issue 9): /metrics moves as commands and requests run, each answered
command and each request is one JSON log line with its ids and never clinical content, and a stop makes
readiness false before anything else."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import aiohttp
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.client import envelope, send_command
from service.logs import json_formatter
from service.runner import RunningService, start_service
from service.settings import Settings
from tests.conftest import TokenFactory
from tests.integration.commands import RestCaller
from tests.integration.fhir_client import fhir_get
from tests.integration.helpers import CARE_PLAN
from tests.integration.scrape import moved, scrape, value

# Words of the plan that must never reach a log line: its title, its description, a note, a patient id.
CLINICAL = CARE_PLAN | {
    "title": "Zebra-4471 insulin titration",
    "description": "History of hypoglycaemia at night",
    "notes": ["Lives alone; daughter visits Sundays"],
    "patient_id": "patient-quokka-93",
}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the service's JSON handler would write for the command and request loggers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    loggers = [logging.getLogger("careplan.commands"), logging.getLogger("careplan.http")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_commands_are_counted_by_type_transport_and_outcome(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    rest = RestCaller(nc, service.http_url, token_for(tenant))
    before = await scrape(service)
    # Given one plan made over NATS, a stale update over NATS, and one plan made over HTTP, sent twice
    made = await rest.ok("careplan.create", CARE_PLAN)
    stale = await send_command(
        nc,
        "careplan.update",
        envelope({"care_plan_id": made["id"], "changes": {"title": "x"}}, expected_version=7),
        token=rest.token,
    )
    assert stale["error"]["code"] == "VERSION_CONFLICT"
    key = str(uuid.uuid4())
    for _ in range(2):
        assert (await rest.send("careplan.create", CARE_PLAN, idempotency_key=key))["status"] == 201
    after = await scrape(service)

    def commands(command: str, transport: str, outcome: str) -> float:
        return moved(
            before, after, "careplan_commands_total", command=command, transport=transport, outcome=outcome
        )

    assert commands("careplan.create", "http", "ok") == 3
    assert commands("careplan.update", "nats", "VERSION_CONFLICT") == 1
    assert commands("careplan.create", "nats", "ok") == 0
    assert moved(before, after, "careplan_command_replays_total", transport="http") == 1
    latency = "careplan_command_duration_seconds_count"
    assert moved(before, after, latency, command="careplan.create", transport="http") == 3
    assert moved(before, after, latency, command="careplan.update", transport="nats") == 1
    # the HTTP side: by route template and status, never by path
    requests = "careplan_http_requests_total"
    assert moved(before, after, requests, route="/api/v1/care-plans", method="POST", status="201") == 3
    assert not any(made["id"] in dict(labels).get("route", "") for _, labels in after)


async def test_fhir_requests_are_counted_by_route_and_status_with_latency(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    rest = RestCaller(nc, service.http_url, token_for(tenant))
    plan = await rest.ok("careplan.create", CARE_PLAN)
    before = await scrape(service)
    await rest.read("CarePlan", plan["id"])
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service.http_url}/fhir/CarePlan/not-there", headers={"Authorization": f"Bearer {rest.token}"}
        ) as missing,
    ):
        assert missing.status == 404
    after = await scrape(service)
    route = "/fhir/CarePlan/{id}"
    assert moved(before, after, "careplan_http_requests_total", route=route, method="GET", status="200") == 1
    assert moved(before, after, "careplan_http_requests_total", route=route, method="GET", status="404") == 1
    assert (
        moved(before, after, "careplan_http_request_duration_seconds_count", route=route, method="GET") == 2
    )


async def test_outbox_relay_and_consumer_state_are_gauges_read_at_scrape_time(
    service: RunningService, nc: NatsClient, admin_engine: AsyncEngine, tenant: str
) -> None:
    # Given a parked outbox row an hour old (parked rows wait for an operator, and do not count as lag)
    async with admin_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox_parked (id, tenant_id, event_id, subject, payload, created_at, "
                "last_error) VALUES (nextval('outbox_id_seq'), :tenant, :event, 'careplan.evt.x', '\\x7b7d', "
                "now() - interval '1 hour', 'no stream takes subject')"
            ),
            {"tenant": tenant, "event": uuid.uuid4()},
        )
    try:
        samples = await scrape(service)
    finally:
        async with admin_engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM outbox_parked WHERE tenant_id = :tenant"), {"tenant": tenant}
            )
    async with admin_engine.connect() as conn:
        parked_elsewhere = await conn.scalar(text("SELECT count(*) FROM outbox_parked"))
    assert value(samples, "careplan_outbox_parked") == parked_elsewhere + 1
    assert value(samples, "careplan_outbox_relay_lag_seconds") < 3600
    js = nc.jetstream()
    assert value(samples, "careplan_dlq_messages") == (await js.stream_info("CAREPLAN_DLQ")).state.messages
    for gauge in ("careplan_consumer_pending", "careplan_consumer_ack_pending", "careplan_outbox_backlog"):
        assert value(samples, gauge) >= 0, gauge
        assert (gauge, frozenset()) in samples, gauge
    assert value(samples, "careplan_relay_leader") == (1 if service.relay.is_leader else 0)
    assert value(samples, "careplan_ready") == 1


async def test_each_answered_command_is_one_json_line_with_its_ids_and_no_clinical_content(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, json_log: io.StringIO
) -> None:
    body = envelope(CLINICAL)
    reply = await send_command(
        nc, "careplan.create", body, token=token_for(tenant), correlation_id="referral-77"
    )
    assert reply["ok"] is True
    lines = [r for r in records(json_log) if r.get("command_id") == body["command_id"]]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["logger"] == "careplan.commands"
    assert line["level"] == "INFO"
    assert {k: line[k] for k in ("tenant_id", "correlation_id", "outcome", "status", "transport")} == {
        "tenant_id": tenant,
        "correlation_id": "referral-77",
        "outcome": "ok",
        "status": 201,
        "transport": "nats",
    }
    assert line["command"] == "careplan.create"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert line["time"].endswith("+00:00")
    assert_no_clinical_content(json_log.getvalue())


async def test_each_request_is_one_json_line_by_route_with_its_tenant(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, json_log: io.StringIO
) -> None:
    rest = RestCaller(nc, service.http_url, token_for(tenant))
    created = await rest.request("careplan.create", CLINICAL, extra_headers={"X-Correlation-Id": "ref-9"})
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service.http_url}/fhir/CarePlan",
            params={"patient": CLINICAL["patient_id"], "_content": "hypoglycaemia"},
            headers={"Authorization": f"Bearer {rest.token}", "Prefer": "handling=lenient"},
        ) as search,
    ):
        assert search.status == 200
    http_lines = [r for r in records(json_log) if r["logger"] == "careplan.http"]
    assert [(r["method"], r["route"], r["status"]) for r in http_lines] == [
        ("POST", "/api/v1/care-plans", 201),
        ("GET", "/fhir/CarePlan", 200),
    ]
    assert all(r["tenant_id"] == tenant for r in http_lines)
    assert http_lines[0]["correlation_id"] == "ref-9"
    # the REST command has its own line too, with the command id the HTTP answer named
    (command_line,) = [r for r in records(json_log) if r["logger"] == "careplan.commands"]
    assert command_line["command_id"] == created[1]["Idempotency-Key"]
    assert command_line["transport"] == "http"
    assert_no_clinical_content(json_log.getvalue())


def assert_no_clinical_content(log_text: str) -> None:
    for words in ("Zebra-4471", "hypoglycaemia", "daughter", "patient-quokka-93"):
        assert words not in log_text, words


async def test_a_stop_makes_readiness_false_first_and_serves_until_intake_stops(
    service: RunningService, settings: Settings
) -> None:
    # Given a second replica that keeps answering for a drain delay after being told to stop
    replica = await start_service(settings.model_copy(update={"http_port": 0, "drain_delay_s": 1.0}))
    url = replica.http_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as ready:
            assert ready.status == 200
        stopping = asyncio.create_task(replica.stop())
        await asyncio.sleep(0.2)
        # When it is stopping, readiness says no at once, while the listener still answers
        async with http.get(f"{url}/readyz") as draining:
            assert draining.status == 503
            body = await draining.json()
        async with http.get(f"{url}/healthz") as alive:
            assert alive.status == 200
        assert body["checks"]["accepting"] is False
        assert not stopping.done()
        async with http.get(f"{url}/metrics") as metrics:
            assert "careplan_ready 0.0" in await metrics.text()
        await asyncio.wait_for(stopping, 30)
        # Then, once stopped, nothing listens
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{url}/healthz"):
                pass


async def test_metrics_have_the_platform_series_and_the_build(service: RunningService) -> None:
    samples = await scrape(service)
    names = {name for name, _ in samples}
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    } <= names
    assert {"python_gc_collections_total", "python_info"} <= names
    (build,) = [labels for name, labels in samples if name == "careplan_build_info"]
    assert dict(build)["version"] == metadata.version("care-plan-service")
    status, capability = await fhir_get(f"{service.http_url}/fhir/metadata", None)
    assert status == 200
    assert capability["software"]["version"] == dict(build)["version"]
    assert capability["date"] == capability["software"]["releaseDate"]
