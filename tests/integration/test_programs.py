"""Care programs through the real service (CONTRACT §10): define, change a draft, publish, over NATS;
stored as a PlanDefinition with its history, events and Provenance; permissions; bad input writes nothing."""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.fhir_validation import validate_resource
from service.client import envelope, send_command
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import RestCaller
from tests.integration.fhir_client import fhir_get, ids
from tests.integration.helpers import count_rows
from tests.outbox_ledger import OUTBOX_LEDGER

AUTHOR = ["program-author"]
PROGRAM: dict[str, Any] = {
    "name": "type-2-diabetes",
    "title": "Type 2 diabetes",
    "goals": [{"key": "a1c", "description": {"text": "HbA1c below 7 %"}}],
    "activities": [
        {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P12W"}
    ],
}


async def test_define_update_and_publish_a_program_version(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant, roles=AUTHOR)
    defined = await send_command(nc, "program.define", envelope(PROGRAM), token=token)
    assert defined["ok"] is True, defined
    assert defined["status"] == 201
    program_id = defined["result"]["id"]
    updated = await send_command(
        nc,
        "program.update",
        envelope(
            {"program_id": program_id, "changes": {"title": "Type 2 diabetes, adults"}}, expected_version=1
        ),
        token=token,
    )
    assert updated["ok"] is True, updated
    published = await send_command(
        nc, "program.change_status", envelope({"program_id": program_id, "status": "active"}), token=token
    )
    assert published["ok"] is True, published
    assert published["result"]["version"] == 3

    async with admin_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT name, program_version, status, url, resource::text FROM plan_definitions "
                    "WHERE tenant_id = :t AND id = :i"
                ),
                {"t": tenant, "i": program_id},
            )
        ).one()
        history = (
            await conn.execute(
                text(
                    "SELECT version FROM resource_history WHERE tenant_id = :t AND resource_type = "
                    "'PlanDefinition' AND resource_id = :i ORDER BY version"
                ),
                {"t": tenant, "i": program_id},
            )
        ).all()
        subjects = (
            await conn.execute(
                text(f"SELECT subject FROM {OUTBOX_LEDGER} WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            )
        ).all()
    name, program_version, status, url, resource = row
    assert (name, program_version, status) == ("type-2-diabetes", "1", "active")
    assert url.endswith(f"/{tenant}/type-2-diabetes")
    stored = orjson.loads(resource)
    validate_resource(stored)
    assert (stored["title"], stored["status"], stored["meta"]["versionId"]) == (
        "Type 2 diabetes, adults",
        "active",
        "3",
    )
    assert [v for (v,) in history] == [1, 2, 3]
    events = [s for (s,) in subjects if s.startswith("careplan.evt.")]
    assert events == [f"careplan.evt.{tenant}.program.{e}" for e in ("defined", "updated", "published")]
    assert await count_rows(admin_engine, "provenance", tenant) == 3


async def test_a_second_define_of_the_name_is_version_2(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant, roles=AUTHOR)
    first = await send_command(nc, "program.define", envelope(PROGRAM), token=token)
    second = await send_command(
        nc, "program.define", envelope(PROGRAM | {"revises": first["result"]["id"]}), token=token
    )
    assert second["ok"] is True, second
    assert second["status"] == 201


async def test_a_clinician_may_not_author_programs_and_nothing_is_written(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    reply = await send_command(nc, "program.define", envelope(PROGRAM), token=token_for(tenant))
    assert reply["ok"] is False
    assert reply["error"]["code"] == "FORBIDDEN"
    assert await count_rows(admin_engine, "plan_definitions", tenant) == 0


async def test_bad_program_content_is_a_validation_error_with_its_path(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant, roles=AUTHOR)
    cases = {
        "data.activities.0.goal_keys.0": PROGRAM
        | {"activities": [{"key": "lab", "description": "x", "goal_keys": ["weight"]}]},
        "data.activities.0.key": PROGRAM | {"activities": [{"key": "a1c", "description": "x"}]},
        "data.activities.0.start_after": PROGRAM
        | {"activities": [{"key": "lab", "description": "x", "start_after": "3 months"}]},
    }
    for path, data in cases.items():
        reply = await send_command(nc, "program.define", envelope(data), token=token)
        assert reply["ok"] is False, path
        assert reply["error"]["code"] == "VALIDATION_ERROR", reply
        assert path in orjson.dumps(reply["error"]).decode(), reply
    assert await count_rows(admin_engine, "plan_definitions", tenant) == 0
    assert await count_rows(admin_engine, "resource_history", tenant) == 0


async def published_program(nc: NatsClient, token: str, data: dict[str, Any] = PROGRAM) -> str:
    defined = await send_command(nc, "program.define", envelope(data), token=token)
    program_id: str = defined["result"]["id"]
    published = await send_command(
        nc, "program.change_status", envelope({"program_id": program_id, "status": "active"}), token=token
    )
    assert published["ok"] is True, published
    return program_id


async def test_plan_definitions_are_read_vread_history_and_search(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant, roles=AUTHOR)
    program_id = await published_program(nc, token)
    other_id = await published_program(nc, token, PROGRAM | {"name": "copd", "title": "COPD"})
    reader = token_for(tenant)  # a clinician reads programs; only authors write them
    base = f"{service.http_url}/fhir/PlanDefinition"

    status, resource = await fhir_get(f"{base}/{program_id}", reader)
    assert status == 200
    validate_resource(resource)
    assert (resource["status"], resource["meta"]["versionId"]) == ("active", "2")
    status, first = await fhir_get(f"{base}/{program_id}/_history/1", reader)
    assert (status, first["status"]) == (200, "draft")
    status, history = await fhir_get(f"{base}/{program_id}/_history", reader)
    assert status == 200 and [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]

    url = resource["url"]
    searches = {
        "url": ({"url": url}, [program_id]),
        "version": ({"url": url, "version": "1"}, [program_id]),
        "name": ({"name": "copd"}, [other_id]),
        "title": ({"title": "type 2"}, [program_id]),
        "status": ({"status": "active", "_sort": "name"}, [other_id, program_id]),
        "nothing": ({"status": "retired"}, []),
    }
    for what, (params, expected) in searches.items():
        status, bundle = await fhir_get(base, reader, params=params)
        assert status == 200, (what, bundle)
        assert ids(bundle) == expected, what


async def test_patients_and_other_tenants_see_no_plan_definition(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    program_id = await published_program(nc, token_for(tenant, roles=AUTHOR))
    base = f"{service.http_url}/fhir/PlanDefinition"
    patient = token_for(tenant, roles=["patient"], patient_id="p1")
    stranger = token_for(f"{tenant}x", roles=AUTHOR)
    for token in (patient, stranger):
        assert (await fhir_get(f"{base}/{program_id}", token))[0] == 404
        assert (await fhir_get(f"{base}/{program_id}/_history/1", token))[0] == 404
        status, bundle = await fhir_get(base, token, params={"status": "active"})
        assert status == 200 and ids(bundle) == []


async def test_enrolment_makes_a_plan_with_its_goals_and_tasks_in_one_transaction(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    await published_program(nc, token_for(tenant, roles=AUTHOR))
    clinician = token_for(tenant)
    reply = await send_command(
        nc,
        "careplan.enroll",
        envelope({"patient_id": "p1", "program": "type-2-diabetes", "start": "2027-01-04"}),
        token=clinician,
    )
    assert reply["ok"] is True, reply
    assert reply["status"] == 201
    plan_id = reply["result"]["id"]
    status, plan = await fhir_get(f"{service.http_url}/fhir/CarePlan/{plan_id}", clinician)
    assert status == 200
    assert plan["instantiatesCanonical"][0].endswith(f"/{tenant}/type-2-diabetes|1")
    (task_ref,) = plan["activity"]
    status, task = await fhir_get(f"{service.http_url}/fhir/{task_ref['reference']['reference']}", clinician)
    assert status == 200
    assert task["restriction"]["period"]["start"] == "2027-03-29"  # P12W after the start
    assert {
        "url": "https://care-plan-service.dev/fhir/StructureDefinition/program-key",
        "valueId": "a1c-lab",
    } in (task["extension"])
    async with admin_engine.connect() as conn:
        subjects = [
            s
            for (s,) in await conn.execute(
                text(f"SELECT subject FROM {OUTBOX_LEDGER} WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            )
        ]
        transactions = await conn.scalar(
            text(
                "SELECT count(DISTINCT command_id) FROM resource_history "
                "WHERE tenant_id = :t AND resource_type <> 'PlanDefinition'"
            ),
            {"t": tenant},
        )
    enrolled = [s.removeprefix(f"careplan.evt.{tenant}.") for s in subjects if ".program." not in s]
    assert sorted(e for e in enrolled if not e.startswith("careplan.audit")) == sorted(
        ["careplan.created", "careplan.enrolled", "goal.added", "activity.added"]
    )
    assert transactions == 1  # the plan, its goal and its task: one command, one commit

    canonical = plan["instantiatesCanonical"][0]
    url = canonical.split("|")[0]
    for value, expected in ((canonical, [plan_id]), (url, [plan_id]), (f"{url}|2", [])):
        status, bundle = await fhir_get(
            f"{service.http_url}/fhir/CarePlan", clinician, params={"instantiates-canonical": value}
        )
        assert status == 200 and ids(bundle) == expected, value


async def test_enrolling_into_a_draft_program_is_refused_and_writes_nothing(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    await send_command(nc, "program.define", envelope(PROGRAM), token=token_for(tenant, roles=AUTHOR))
    reply = await send_command(
        nc,
        "careplan.enroll",
        envelope({"patient_id": "p1", "program": "type-2-diabetes|1"}),
        token=token_for(tenant),
    )
    assert reply["ok"] is False
    assert reply["error"]["code"] == "INVALID_TRANSITION", reply
    unknown = await send_command(
        nc, "careplan.enroll", envelope({"patient_id": "p1", "program": "copd"}), token=token_for(tenant)
    )
    assert unknown["error"]["code"] == "NOT_FOUND", unknown
    assert await count_rows(admin_engine, "care_plans", tenant) == 0


async def test_the_rest_routes_define_publish_and_enrol(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    author = RestCaller(nc, service.http_url, token_for(tenant, roles=AUTHOR))
    status, headers, body = await author.request("program.define", PROGRAM)
    assert status == 201, body
    assert headers["Location"] == f"{service.http_url}/fhir/PlanDefinition/{body['id']}"
    status, _, _ = await author.request(
        "program.update", {"program_id": body["id"], "changes": {"title": "T2D"}}
    )
    assert status == 428  # a draft's update needs If-Match
    status, _, published = await author.request(
        "program.change_status", {"program_id": body["id"], "status": "active"}
    )
    assert (status, published["version"]) == (200, 2)
    clinician = RestCaller(nc, service.http_url, token_for(tenant))
    status, headers, plan = await clinician.request(
        "careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes|1"}
    )
    assert status == 201, plan
    assert headers["Location"] == f"{service.http_url}/fhir/CarePlan/{plan['id']}"


async def test_the_capability_statement_lists_plan_definitions_and_names_the_key_extension(
    service: RunningService,
) -> None:
    status, statement = await fhir_get(f"{service.http_url}/fhir/metadata", None)
    assert status == 200
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    definition = resources["PlanDefinition"]
    assert {p["name"] for p in definition["searchParam"]} >= {"url", "version", "name", "title", "status"}
    assert {i["code"] for i in definition["interaction"]} >= {
        "read",
        "vread",
        "history-instance",
        "search-type",
    }
    key = "https://care-plan-service.dev/fhir/StructureDefinition/program-key"
    assert key in resources["Goal"]["documentation"] and key in resources["Task"]["documentation"]
