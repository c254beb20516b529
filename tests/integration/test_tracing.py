"""One trace from the caller to the event's consumers (CONTRACT §12), through the real service with an
in-memory span exporter: a REST request and a NATS command, each sent with a caller's `traceparent`,
continue that trace through authentication, the transaction and the reply; their events carry it as the
CloudEvents `traceparent` extension, and the relay's publish span links to it. Log lines written on the
way carry its trace and span ids."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from schemas.commands import COMMAND_SUBJECT_PREFIX
from service.client import ask_outcome, envelope
from service.logs import ContextFields
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller
from tests.integration.helpers import CARE_PLAN, event_caused_by, last_event
from tests.integration.programs import STAFF, V1, V2, enrol, publish, until_completed

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, once, with every span kept in memory (OpenTelemetry lets a process
    set its provider once: later tests of the session run traced, which they must bear)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def caller_context() -> tuple[str, str, str]:
    """A caller's W3C traceparent, with its trace and span ids in hex."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


async def wait_for_span(exporter: InMemorySpanExporter, name_prefix: str, trace_id: str) -> ReadableSpan:
    """The relay's publish span links to the trace (it is a trace of its own)."""
    for _ in range(200):
        for span in exporter.get_finished_spans():
            if span.name.startswith(name_prefix) and any(
                format(link.context.trace_id, "032x") == trace_id for link in span.links
            ):
                return span
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name_prefix!r} span linked to {trace_id}")


async def test_a_rest_command_continues_the_callers_trace_to_its_event(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, spans: InMemorySpanExporter
) -> None:
    traceparent, trace_id, caller_span = caller_context()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service.http_url}/api/v1/care-plans",
            json=CARE_PLAN,
            headers={"Authorization": f"Bearer {token_for(tenant)}", "traceparent": traceparent},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        command_id = response.headers["Idempotency-Key"]
    traced = of_trace(spans, trace_id)
    (server,) = [s for s in traced if s.kind is SpanKind.SERVER]
    assert server.name == "POST /api/v1/care-plans"
    assert server.parent is not None and format(server.parent.span_id, "016x") == caller_span
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 201
    children = {
        s.name: s for s in traced if s.parent is not None and s.parent.span_id == server.context.span_id
    }
    assert {"transaction"} <= set(children)
    event = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created", command_id
    )
    assert event["traceparent"].split("-")[1] == trace_id  # the consumer joins the caller's trace
    publish = await wait_for_span(spans, "publish", trace_id)
    assert publish.kind is SpanKind.PRODUCER
    assert event["_headers"]["traceparent"].split("-")[1] == format(publish.context.trace_id, "032x")


async def test_a_nats_command_continues_the_callers_trace_and_its_lines_carry_it(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFields())
    traceparent, trace_id, caller_span = caller_context()
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    command_id = str(body["command_id"])
    await nc.jetstream().publish(
        COMMAND_SUBJECT_PREFIX + "careplan.create",
        orjson.dumps(body),
        headers={
            "Nats-Msg-Id": command_id,
            "Authorization": f"Bearer {token}",
            "Traceparent": traceparent,  # NATS headers keep their case: any case is the caller's trace
            "reply_to": "replies.not-an-inbox",  # refused: the consumer logs a line within the trace
        },
    )
    for _ in range(200):
        if (await ask_outcome(nc, command_id, token)).get("ok"):
            break
        await asyncio.sleep(0.05)
    event = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created", command_id
    )
    assert event["traceparent"].split("-")[1] == trace_id
    traced = of_trace(spans, trace_id)
    (consumer,) = [s for s in traced if s.kind is SpanKind.CONSUMER]
    assert consumer.name == f"process {COMMAND_SUBJECT_PREFIX}careplan.create"
    assert consumer.parent is not None and format(consumer.parent.span_id, "016x") == caller_span
    assert consumer.attributes is not None
    assert (consumer.attributes["messaging.system"], consumer.attributes["messaging.message.id"]) == (
        "nats",
        command_id,
    )
    names = {s.name for s in traced if s.parent is not None and s.parent.span_id == consumer.context.span_id}
    assert {"authenticate", "decode", "transaction", "reply"} <= names
    (line,) = [
        r
        for r in caplog.handler.records
        if "reply_to refused" in r.getMessage() and command_id in r.getMessage()
    ]
    assert getattr(line, "trace_id", None) == trace_id
    assert getattr(line, "span_id", None) in {format(s.context.span_id, "016x") for s in traced}
    await wait_for_span(spans, "publish", trace_id)


async def test_without_a_callers_traceparent_the_service_starts_the_trace(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, spans: InMemorySpanExporter
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service.http_url}/api/v1/care-plans",
            json=CARE_PLAN,
            headers={"Authorization": f"Bearer {token_for(tenant)}"},
        ) as response,
    ):
        command_id = response.headers["Idempotency-Key"]
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.parent is None]
    event = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created", command_id
    )
    assert event["traceparent"].split("-")[1] == format(server.context.trace_id, "032x")


async def test_each_rollout_migration_is_a_trace_linked_to_the_command_that_started_the_run(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, spans: InMemorySpanExporter
) -> None:
    """The worker migrates plans long after the command's trace ended: each plan's migration (and the
    run's completion) is a trace of its own, linked to the command's span, and its events carry it."""
    token = token_for(tenant, roles=STAFF)
    caller = Caller(nc, service.http_url, token)
    v1 = await publish(caller, V1)
    plan_ids = {await enrol(caller, "p1"), await enrol(caller, "p2")}
    v2 = await publish(caller, V2 | {"revises": v1})
    traceparent, trace_id, _ = caller_context()
    body = envelope({"program_id": v2, "dry_run": False})
    command_id = str(body["command_id"])
    await nc.jetstream().publish(
        COMMAND_SUBJECT_PREFIX + "program.rollout",
        orjson.dumps(body),
        headers={"Nats-Msg-Id": command_id, "Authorization": f"Bearer {token}", "traceparent": traceparent},
    )
    outcome: dict[str, Any] = {}
    for _ in range(200):
        if (outcome := await ask_outcome(nc, command_id, token)).get("ok"):
            break
        await asyncio.sleep(0.05)
    rollout_id = outcome["result"]["rollout_id"]
    await until_completed(nc, token, rollout_id)
    # The run was written in the command's transaction: what it stored is that span's context.
    (command_span,) = [s for s in of_trace(spans, trace_id) if s.name == "transaction"]

    def linked_to_the_command(span: ReadableSpan) -> bool:
        return [(link.context.trace_id, link.context.span_id) for link in span.links] == [
            (command_span.context.trace_id, command_span.context.span_id)
        ]

    migrations = {
        str((s.attributes or {}).get("careplan.care_plan.id")): s
        for s in spans.get_finished_spans()
        if s.name == "migrate CarePlan" and (s.attributes or {}).get("careplan.rollout.id") == rollout_id
    }
    assert set(migrations) >= plan_ids, migrations
    for plan_id in plan_ids:
        migration = migrations[plan_id]
        assert migration.parent is None and linked_to_the_command(migration)
        assert format(migration.context.trace_id, "032x") != trace_id
    assert len({migrations[p].context.trace_id for p in plan_ids}) == 2  # a trace each
    newest = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.migrated")
    migrated = migrations[newest["subject"].removeprefix("CarePlan/")]
    assert newest["traceparent"].split("-")[1:3] == [
        format(migrated.context.trace_id, "032x"),
        format(migrated.context.span_id, "016x"),
    ]
    completed = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.program.rollout_completed", command_id
    )
    (completion,) = [
        s for s in spans.get_finished_spans() if s.name == "complete rollout" and linked_to_the_command(s)
    ]
    assert completed["traceparent"].split("-")[1] == format(completion.context.trace_id, "032x")
