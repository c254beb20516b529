"""`careplan.create` end to end: command → reply → event → FHIR read, on real JetStream and Postgres."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.provenance import Provenance
from nats.aio.client import Client as NatsClient

from service.client import envelope, send_command
from service.runner import RunningService
from storage.wal_position import WalPosition
from tests.conftest import TokenFactory
from tests.integration.helpers import (
    CARE_PLAN,
    assert_same_answer,
    but_for_position,
    count_messages,
    count_rows,
    last_event,
)


async def test_create_replies_publishes_events_and_serves_fhir(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    # Given a clinician of a licensed tenant
    token = token_for(tenant, subject="dr-who")
    body = envelope(
        CARE_PLAN
        | {
            "description": "Keep HbA1c under 7%",
            "categories": [{"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}],
            "addresses": [
                {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]}
            ],
            "period": {"start": "2026-11-01"},
            "review": {"interval_days": 90, "next_due": "2027-02-01"},
            "notes": ["Patient prefers morning appointments"],
        }
    )

    # When it creates a plan
    reply = await send_command(nc, "careplan.create", body, token=token, correlation_id="corr-1")

    # Then the reply carries the new plan at version 1
    assert reply["ok"] is True, reply
    assert reply["status"] == 201
    assert reply["command_id"] == body["command_id"]
    plan_id = reply["result"]["id"]
    assert but_for_position(reply)["result"] == {"resource_type": "CarePlan", "id": plan_id, "version": 1}
    assert WalPosition.parse(reply["result"]["position"])  # the commit's, for read-your-writes

    # and the relay publishes the domain event as a CloudEvent
    event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created")
    assert event["specversion"] == "1.0"
    assert event["type"] == "careplan.careplan.created"
    assert event["source"] == "care-plan-service"
    assert event["subject"] == f"CarePlan/{plan_id}"
    assert event["tenantid"] == tenant
    assert event["causationid"] == body["command_id"]
    assert event["correlationid"] == "corr-1"
    assert event["resourceversion"] == 1
    assert event["_headers"]["Nats-Msg-Id"] == event["id"]
    assert event["_headers"]["content-type"] == "application/cloudevents+json"  # structured mode
    assert event["data"]["resource"]["id"] == plan_id

    # and the audit Provenance names the versioned target and the caller
    audit = await last_event(nc, "CAREPLAN_AUDIT", f"careplan.audit.{tenant}")
    provenance = Provenance.model_validate(audit["data"]).model_dump(mode="json")
    assert provenance["target"] == [{"reference": f"CarePlan/{plan_id}/_history/1"}]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "dr-who"
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"

    # and the FHIR read serves the same resource, valid and US Core shaped
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{service.http_url}/fhir/CarePlan/{plan_id}", headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "application/fhir+json"
            assert response.headers["ETag"] == 'W/"1"'
            last_modified = response.headers["Last-Modified"]
            resource = orjson.loads(await response.read())
        async with http.get(
            f"{service.http_url}/fhir/CarePlan/{plan_id}", headers=headers | {"If-None-Match": 'W/"1"'}
        ) as response:
            assert response.status == 304
        async with http.get(
            f"{service.http_url}/fhir/CarePlan/{plan_id}",
            headers=headers | {"If-Modified-Since": last_modified},
        ) as response:
            assert response.status == 304
    CarePlan.model_validate(resource)
    assert resource == event["data"]["resource"]
    assert resource["meta"]["versionId"] == "1"
    assert resource["status"] == "active"
    assert resource["intent"] == "plan"
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["text"]["status"] == "generated"
    assert resource["addresses"][0]["identifier"] == {"system": "http://snomed.info/sct", "value": "44054006"}
    assert resource["note"] == [{"text": "Patient prefers morning appointments"}]


async def test_plan_without_category_gets_us_core_assess_plan(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant))
    event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created")
    assert reply["ok"] is True
    assert event["data"]["resource"]["category"] == [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                    "code": "assess-plan",
                    "display": "Assessment and Plan of Treatment",
                }
            ]
        }
    ]


async def test_same_command_twice_gets_same_outcome_and_makes_one_plan(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: object
) -> None:
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    # Different Nats-Msg-Ids, so the stream's own de-duplication does not hide the second one from us.
    first = await send_command(nc, "careplan.create", body, token=token, message_id=str(uuid.uuid4()))
    second = await send_command(nc, "careplan.create", body, token=token, message_id=str(uuid.uuid4()))
    assert first["ok"] is True
    assert_same_answer(second, first)
    await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created")
    await asyncio.sleep(0.5)  # give a wrongly duplicated event time to show up
    assert await count_rows(admin_engine, "care_plans", tenant) == 1  # type: ignore[arg-type]
    assert await count_rows(admin_engine, "resource_history", tenant) == 1  # type: ignore[arg-type]
    assert await count_messages(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.>") == 1


async def test_stream_drops_a_resent_message_id(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    body = envelope(CARE_PLAN)
    await send_command(nc, "careplan.create", body, token=token_for(tenant))
    ack = await nc.jetstream().publish(
        "careplan.cmd.careplan.create",
        orjson.dumps(body),
        headers={"Nats-Msg-Id": body["command_id"], "Authorization": f"Bearer {token_for(tenant)}"},
    )
    assert ack.duplicate is True


async def test_same_command_id_with_another_body_is_rejected(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: object
) -> None:
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    first = await send_command(nc, "careplan.create", body, token=token)
    changed = body | {"data": CARE_PLAN | {"title": "Something else"}}
    second = await send_command(nc, "careplan.create", changed, token=token, message_id=str(uuid.uuid4()))
    assert first["ok"] is True
    assert second["ok"] is False
    assert second["status"] == 422
    assert second["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await count_rows(admin_engine, "care_plans", tenant) == 1  # type: ignore[arg-type]


async def test_caller_chosen_id_that_exists_is_a_version_conflict(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    plan_id = str(uuid.uuid4())
    first = await send_command(nc, "careplan.create", envelope(CARE_PLAN | {"id": plan_id}), token=token)
    second = await send_command(nc, "careplan.create", envelope(CARE_PLAN | {"id": plan_id}), token=token)
    assert first["result"]["id"] == plan_id
    assert second["ok"] is False
    assert second["status"] == 409
    assert second["error"]["code"] == "VERSION_CONFLICT"
    assert second["error"]["details"] == {"current_version": 1}


async def test_outcome_can_be_asked_for_later_over_http(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    reply = await send_command(nc, "careplan.create", body, token=token)
    async with aiohttp.ClientSession() as http:
        url = f"{service.http_url}/api/v1/commands/{body['command_id']}"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            assert_same_answer(await response.json(), reply)
        other = token_for(f"{tenant}x")
        async with http.get(url, headers={"Authorization": f"Bearer {other}"}) as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
        async with http.get(url) as response:
            assert response.status == 401


async def test_health_and_readiness(service: RunningService) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.http_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{service.http_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {
                "accepting": True,
                "database": True,
                "nats": True,
                "consumer": True,
            }


async def test_outcome_can_be_asked_for_later_over_nats(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    reply = await send_command(nc, "careplan.create", body, token=token)

    async def ask(payload: bytes, bearer: str | None) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        answer = await nc.request("careplan.query.command", payload, timeout=5, headers=headers)
        result: dict[str, object] = orjson.loads(answer.data)
        return result

    query = orjson.dumps({"command_id": body["command_id"]})
    assert_same_answer(await ask(query, token), reply)
    foreign = await ask(query, token_for(f"{tenant}x"))
    assert foreign["status"] == 404
    unknown = await ask(orjson.dumps({"command_id": str(uuid.uuid4())}), token)
    assert unknown["status"] == 404
    malformed = await ask(b"{", token)
    assert malformed["error"]["code"] == "VALIDATION_ERROR"  # type: ignore[index]
    anonymous = await ask(query, None)
    assert anonymous["error"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
