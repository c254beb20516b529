"""Commands checked against the services we do not own, end to end: a `careplan serve` of its own in
`upstream_mode=nats` (own nats-server and database, so its consumer is not the session service's), real
NATS responders playing registration, scheduling, the provider directory and terminology.

A "no" is a final, recorded 422; silence is retried with back-off and, past the last delivery,
dead-lettered and answered UPSTREAM_UNAVAILABLE; nothing is written for a refused command."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.client import envelope, send_command
from service.embedded.nats_server import EmbeddedNats
from service.runner import RunningService, start_service
from service.settings import Settings
from storage.database import create_engine
from tests.conftest import DatabaseUrls, TokenFactory, migrated_database
from tests.integration.commands import RestCaller
from tests.integration.helpers import assert_same_answer, count_rows, last_event
from tests.integration.scrape import moved, scrape, value
from tests.outbox_ledger import OUTBOX_LEDGER
from tests.upstream_responders import UpstreamResponders, start_responders

SNOMED = "http://snomed.info/sct"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
DIABETES = {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"}
HBA1C_GOAL = {"system": SNOMED, "code": "281004", "display": "Controlled blood glucose"}


@pytest.fixture(scope="module")
def checked_nats_url(short_tmp: Path) -> Iterator[str]:
    with EmbeddedNats(short_tmp / "nats-upstream") as server:
        yield server.url


@pytest.fixture(scope="module")
def checked_database(postgres_server_url: str) -> Iterator[DatabaseUrls]:
    with migrated_database(postgres_server_url, "careplan_upstream") as urls:
        yield urls


@pytest.fixture(scope="module")
async def checked_nc(checked_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(checked_nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def upstream(checked_nc: NatsClient) -> AsyncIterator[UpstreamResponders]:
    responders = await start_responders(checked_nc)
    yield responders
    for responder in responders.all:
        await responder.close()


@pytest.fixture(scope="module")
async def checked_service(
    settings: Settings, checked_database: DatabaseUrls, checked_nats_url: str, upstream: UpstreamResponders
) -> AsyncIterator[RunningService]:
    running = await start_service(
        settings.model_copy(
            update={
                "nats_url": checked_nats_url,
                "database_url": checked_database.runtime,
                "system_database_url": checked_database.system,
                "upstream_mode": "nats",
                "upstream_registration_subject": upstream.subjects.registration,
                "upstream_scheduling_subject": upstream.subjects.scheduling,
                "upstream_providers_subject": upstream.subjects.providers,
                "upstream_terminology_subject": upstream.subjects.terminology,
                "upstream_timeout_ms": 300,
                "upstream_breaker_reset_s": 0.5,
                "max_deliver": 3,
                "nak_backoff_max_s": 0.5,
            }
        )
    )
    yield running
    await running.stop()


@pytest.fixture
async def checked_admin(checked_database: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(checked_database.admin, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def healthy_upstream(upstream: UpstreamResponders) -> None:
    await upstream.reset()


@pytest.fixture
def world(upstream: UpstreamResponders, tenant: str) -> Any:
    """This test's tenant has patient p1 (active), p2 (active), p-old (inactive), encounter e1 of p1,
    practitioners dr-a, dr-b (active) and dr-left (inactive)."""
    w = upstream.world
    w.patients |= {(tenant, "p1"): True, (tenant, "p2"): True, (tenant, "p-old"): False}
    w.encounters |= {(tenant, "e1"): "p1"}
    w.practitioners |= {(tenant, "dr-a"): True, (tenant, "dr-b"): True, (tenant, "dr-left"): False}
    return w


async def send(
    nc: NatsClient, name: str, body: dict[str, Any], token: str, timeout: float = 15
) -> dict[str, Any]:
    return await send_command(nc, name, body, token=token, timeout=timeout)


async def create_plan(nc: NatsClient, token: str, **data: Any) -> dict[str, Any]:
    reply = await send(
        nc, "careplan.create", envelope({"patient_id": "p1", "title": "Diabetes", **data}), token
    )
    assert reply["ok"] is True, reply
    return reply


async def test_a_plan_with_known_patient_encounter_author_and_codes_is_created_and_the_jwt_forwarded(
    checked_service: RunningService,
    checked_nc: NatsClient,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    token = token_for(tenant)
    reply = await create_plan(
        checked_nc,
        token,
        encounter_id="e1",
        author_id="dr-a",
        categories=[{"coding": [{"system": US_CORE_CATEGORY, "code": "assess-plan"}]}],
        addresses=[{"coding": [DIABETES]}],
    )
    assert reply["status"] == 201
    patient_request = upstream.registration.requests[-1]
    assert patient_request.body == {"tenant_id": tenant, "patient_id": "p1"}
    assert patient_request.headers["Authorization"] == f"Bearer {token}"
    assert upstream.scheduling.requests[-1].body == {"tenant_id": tenant, "encounter_id": "e1"}
    assert upstream.providers.requests[-1].body == {"tenant_id": tenant, "practitioner_id": "dr-a"}
    # Only terminology's systems go to terminology; FHIR's own category codes are checked locally.
    assert [r.body["code"] for r in upstream.terminology.requests] == ["44054006"]


async def test_an_unknown_patient_is_refused_once_and_for_all_and_nothing_is_written(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    body = envelope({"patient_id": "p-nobody", "title": "Diabetes"})
    reply = await send(checked_nc, "careplan.create", body, token_for(tenant))
    assert reply["ok"] is False
    assert reply["status"] == 422
    assert reply["error"]["code"] == "PATIENT_NOT_FOUND"
    assert reply["error"]["details"]["errors"] == [
        {
            "path": "data.patient_id",
            "reference": "Patient/p-nobody",
            "message": "no such patient is registered",
        }
    ]
    for table in ("care_plans", "resource_history", "provenance", OUTBOX_LEDGER):
        assert await count_rows(checked_admin, table, tenant) == 0, table
    assert await count_rows(checked_admin, "command_log", tenant) == 1

    # The refusal is the command's outcome: re-sent after the patient is registered, it is answered the
    # same from the command log, without asking registration again.
    world.patients[(tenant, "p-nobody")] = True
    asked = len(upstream.registration.requests)
    # (a new Nats-Msg-Id: the stream would drop a re-send within its duplicate window)
    again = await send_command(
        checked_nc, "careplan.create", body, token=token_for(tenant), message_id=str(uuid.uuid4()), timeout=5
    )
    assert_same_answer(again, reply)
    assert len(upstream.registration.requests) == asked
    # A new command for the now-registered patient goes through.
    await create_plan(checked_nc, token_for(tenant), patient_id="p-nobody")


async def test_an_inactive_patient_is_refused(
    checked_service: RunningService, checked_nc: NatsClient, world: Any, tenant: str, token_for: TokenFactory
) -> None:
    reply = await send(
        checked_nc, "careplan.create", envelope({"patient_id": "p-old", "title": "x"}), token_for(tenant)
    )
    assert reply["error"]["code"] == "PATIENT_NOT_FOUND"
    assert reply["error"]["details"]["errors"][0]["message"] == "the patient record is not active"


@pytest.mark.parametrize(
    ("encounter_id", "message"),
    [("e-none", "no such encounter is scheduled"), ("e1", "the encounter is not patient p2's")],
)
async def test_an_encounter_must_exist_and_be_the_patients(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
    encounter_id: str,
    message: str,
) -> None:
    body = envelope({"patient_id": "p2", "title": "x", "encounter_id": encounter_id})
    reply = await send(checked_nc, "careplan.create", body, token_for(tenant))
    assert reply["status"] == 422
    assert reply["error"]["code"] == "ENCOUNTER_NOT_FOUND"
    assert reply["error"]["details"]["errors"] == [
        {"path": "data.encounter_id", "reference": f"Encounter/{encounter_id}", "message": message}
    ]
    assert await count_rows(checked_admin, "care_plans", tenant) == 0


async def test_a_new_encounter_on_update_must_be_the_plans_patients(
    checked_service: RunningService,
    checked_nc: NatsClient,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    token = token_for(tenant)
    world.encounters |= {(tenant, "e2"): "p2", (tenant, "e3"): "p1"}
    plan = (await create_plan(checked_nc, token, encounter_id="e1"))["result"]
    foreign = envelope({"care_plan_id": plan["id"], "changes": {"encounter_id": "e2"}}, expected_version=1)
    reply = await send(checked_nc, "careplan.update", foreign, token)
    assert reply["error"]["code"] == "ENCOUNTER_NOT_FOUND"
    assert reply["error"]["details"]["errors"] == [
        {
            "path": "data.changes.encounter_id",
            "reference": "Encounter/e2",
            "message": "the encounter is not patient p1's",
        }
    ]
    own = envelope({"care_plan_id": plan["id"], "changes": {"encounter_id": "e3"}}, expected_version=1)
    reply = await send(checked_nc, "careplan.update", own, token)
    assert reply["ok"] is True, reply
    assert reply["result"]["version"] == 2


async def test_unknown_and_inactive_practitioners_are_refused_all_listed(
    checked_service: RunningService, checked_nc: NatsClient, world: Any, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    plan = (await create_plan(checked_nc, token))["result"]
    add = envelope({"care_plan_id": plan["id"], "member_id": "dr-nobody", "role": {"text": "GP"}})
    reply = await send(checked_nc, "careteam.add_member", add, token)
    assert reply["error"]["code"] == "PRACTITIONER_NOT_FOUND"
    assert reply["error"]["details"]["errors"][0]["reference"] == "Practitioner/dr-nobody"

    review = envelope({"care_plan_id": plan["id"], "reviewer_id": "dr-left"}, expected_version=1)
    reply = await send(checked_nc, "careplan.request_review", review, token)
    assert reply["error"]["code"] == "PRACTITIONER_NOT_FOUND"
    assert reply["error"]["details"]["errors"][0]["message"] == "the practitioner is not active"

    activity = envelope(
        {
            "care_plan_id": plan["id"],
            "description": "Foot exam",
            "owner_id": "dr-ghost",
            "code": {"coding": [{"system": SNOMED, "code": "401191002"}]},
        }
    )
    world.unknown_codes[(SNOMED, "401191002")] = "inactive concept"
    reply = await send(checked_nc, "activity.add", activity, token)
    # An unknown owner and an unknown code: the reference comes first, and only references are listed.
    assert reply["error"]["code"] == "PRACTITIONER_NOT_FOUND"
    assert [e["path"] for e in reply["error"]["details"]["errors"]] == ["data.owner_id"]


async def test_a_code_terminology_does_not_know_is_invalid_code_with_its_path_and_message(
    checked_service: RunningService, checked_nc: NatsClient, world: Any, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    plan = (await create_plan(checked_nc, token))["result"]
    world.unknown_codes[(SNOMED, "281004")] = "281004 is not a concept in this edition"
    goal = envelope({"care_plan_id": plan["id"], "description": {"coding": [HBA1C_GOAL]}})
    reply = await send(checked_nc, "goal.add", goal, token)
    assert reply["status"] == 422
    assert reply["error"]["code"] == "INVALID_CODE"
    assert reply["error"]["details"]["errors"] == [
        {
            "path": "data.description.coding.0",
            "system": SNOMED,
            "code": "281004",
            "message": "281004 is not a concept in this edition",
        }
    ]


async def test_a_member_who_left_the_directory_can_still_be_removed(
    checked_service: RunningService,
    checked_nc: NatsClient,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    token = token_for(tenant)
    plan = (await create_plan(checked_nc, token))["result"]
    add = envelope({"care_plan_id": plan["id"], "member_id": "dr-b", "role": {"text": "Nurse"}})
    assert (await send(checked_nc, "careteam.add_member", add, token))["ok"] is True
    world.practitioners[(tenant, "dr-b")] = False
    asked = len(upstream.providers.requests)
    remove = envelope({"care_plan_id": plan["id"], "member_id": "dr-b"}, expected_version=1)
    reply = await send(checked_nc, "careteam.remove_member", remove, token)
    assert reply["ok"] is True, reply
    assert len(upstream.providers.requests) == asked


async def test_a_silent_service_is_retried_with_back_off_until_it_answers(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.nats_consumer")
    await upstream.registration.stop()
    pending = asyncio.create_task(
        send(checked_nc, "careplan.create", envelope({"patient_id": "p1", "title": "x"}), token_for(tenant))
    )
    async with asyncio.timeout(10):
        while not any("will retry" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    retry = next(r.getMessage() for r in caplog.records if "will retry" in r.getMessage())
    assert "delivery 1 of 3" in retry
    assert "registration unavailable: no responders" in retry
    await upstream.registration.start()
    reply = await pending
    assert reply["ok"] is True, reply
    assert await count_rows(checked_admin, "care_plans", tenant) == 1


async def test_a_service_silent_for_every_delivery_is_dead_lettered_and_answered_unavailable(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    upstream.providers.delay_s = 2.0  # slower than the 300 ms timeout, every time
    body = envelope({"patient_id": "p1", "title": "x", "author_id": "dr-a"})
    reply = await send(checked_nc, "careplan.create", body, token_for(tenant), timeout=30)
    assert reply["ok"] is False
    assert reply["status"] == 503
    assert reply["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert len({r.body["practitioner_id"] for r in upstream.providers.requests}) == 1
    assert len(upstream.providers.requests) == 3  # one per delivery (max_deliver)
    dead = await last_event(checked_nc, "CAREPLAN_DLQ", "careplan.dlq.careplan.create")
    assert dead["command_id"] == body["command_id"]
    assert dead["_headers"]["Careplan-Error"] == "Unavailable: providers unavailable: no reply within 300 ms"
    for table in ("care_plans", "command_log", OUTBOX_LEDGER):
        assert await count_rows(checked_admin, table, tenant) == 0, table


async def test_an_answered_command_is_answered_again_while_the_services_are_away(
    checked_service: RunningService,
    checked_nc: NatsClient,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    body = envelope({"patient_id": "p1", "title": "x", "author_id": "dr-a"})
    first = await send(checked_nc, "careplan.create", body, token_for(tenant))
    assert first["ok"] is True
    for responder in upstream.all:
        await responder.stop()
    # A re-send with the same id but a new Nats-Msg-Id (past the stream's de-duplication window)
    again = await send_command(
        checked_nc, "careplan.create", body, token=token_for(tenant), message_id=str(uuid.uuid4()), timeout=5
    )
    assert_same_answer(again, first)


# --- the same checks over the REST write API (CONTRACT §9) ---


async def test_over_http_an_unknown_patient_is_the_same_422_as_a_problem(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    rest = RestCaller(checked_nc, checked_service.http_url, token_for(tenant))
    reply = await rest.send("careplan.create", {"patient_id": "p-nobody", "title": "Diabetes"})
    assert (reply["status"], reply["error"]["code"]) == (422, "PATIENT_NOT_FOUND")
    assert reply["error"]["details"]["errors"][0]["path"] == "data.patient_id"
    assert await count_rows(checked_admin, "care_plans", tenant) == 0
    assert (await rest.send("careplan.create", {"patient_id": "p1", "title": "Diabetes"}))["status"] == 201


async def test_over_http_a_silent_service_is_503_with_retry_after_and_the_same_key_succeeds_later(
    checked_service: RunningService,
    checked_nc: NatsClient,
    checked_admin: AsyncEngine,
    upstream: UpstreamResponders,
    world: Any,
    tenant: str,
    token_for: TokenFactory,
) -> None:
    rest = RestCaller(checked_nc, checked_service.http_url, token_for(tenant))
    data = {"patient_id": "p1", "title": "x", "author_id": "dr-a"}
    key = str(uuid.uuid4())
    before = await scrape(checked_service)
    # Given the provider directory silent past the timeout, until its circuit opens
    upstream.providers.delay_s = 2.0
    for _ in range(checked_service.settings.upstream_breaker_failures):
        status, headers, body = await rest.request("careplan.create", data, idempotency_key=key)
        # Then each try is a 503 telling when to retry, with nothing recorded
        assert (status, body["code"], headers["Retry-After"]) == (503, "UPSTREAM_UNAVAILABLE", "1")
        assert body["command_id"] == key
    assert await count_rows(checked_admin, "command_log", tenant) == 0
    during = await scrape(checked_service)
    assert value(during, "careplan_upstream_circuit_open", service="providers") == 1
    outcome = {"command": "careplan.create", "transport": "http", "outcome": "unavailable"}
    tries = checked_service.settings.upstream_breaker_failures
    assert moved(before, during, "careplan_commands_total", **outcome) == tries
    # When the service answers again, the same request with the same key is applied, once
    upstream.providers.delay_s = 0
    await asyncio.sleep(checked_service.settings.upstream_breaker_reset_s)
    answered = await rest.send("careplan.create", data, idempotency_key=key)
    assert answered["status"] == 201, answered
    assert await count_rows(checked_admin, "care_plans", tenant) == 1
    after = await scrape(checked_service)
    assert value(after, "careplan_upstream_circuit_open", service="providers") == 0
