"""What a patient token sees, on every read path (issue 15, rows 2, 4, 6 and 7): nothing at all without
a usable `patient_id`; nothing of a draft or entered-in-error plan (its goals, activities, care team and
their audit included); and no command outcome."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from service.client import ask_outcome
from service.dev_identity import DevKeys
from service.runner import RunningService
from tests.integration.commands import Caller
from tests.integration.fhir_client import fhir_get, ids, typed_ids

SNOMED = "http://snomed.info/sct"
ROLE = {"coding": [{"system": SNOMED, "code": "158965000", "display": "Physician"}]}


@dataclass
class Plan:
    plan: str
    goal: str
    task: str
    team: str


@dataclass
class Walls:
    base: str
    tenant: str
    clinician: str
    patient: str  # a patient token for p1
    shown: Plan  # p1's active plan
    draft: Plan  # p1's draft plan
    void: Plan  # p1's plan that was active, then entered-in-error
    create_command: str  # the command id that created `shown`


async def plan_with_parts(caller: Caller, status: str) -> tuple[Plan, dict[str, Any]]:
    created = await caller.ok(
        "careplan.create", {"patient_id": "p1", "title": f"{status} plan", "status": status}
    )
    plan = created["id"]
    goal = await caller.ok("goal.add", {"care_plan_id": plan, "description": {"text": "Walk daily"}})
    await caller.ok("goal.update", {"goal_id": goal["id"], "changes": {"priority": {"text": "high"}}}, 1)
    task = await caller.ok("activity.add", {"care_plan_id": plan, "description": "Physio"})
    team = await caller.ok("careteam.add_member", {"care_plan_id": plan, "member_id": "dr-1", "role": ROLE})
    return Plan(plan, goal["id"], task["id"], team["id"]), created


@pytest.fixture(scope="module")
async def walls(service: RunningService, nc: NatsClient, keys: DevKeys) -> Walls:
    tenant = f"w{uuid.uuid4().hex[:10]}"
    clinician = Caller(nc, service.http_url, keys.mint(tenant_id=tenant, roles=["clinician"]))
    shown, _ = await plan_with_parts(clinician, "active")
    draft, _ = await plan_with_parts(clinician, "draft")
    void, _ = await plan_with_parts(clinician, "active")
    version = (await clinician.read("CarePlan", void.plan))["meta"]["versionId"]
    await clinician.ok(
        "careplan.change_status", {"care_plan_id": void.plan, "status": "entered-in-error"}, int(version)
    )
    created = await clinician.send(
        "careplan.create", {"patient_id": "p2", "title": "Another patient's plan", "status": "active"}
    )
    return Walls(
        base=f"{service.http_url}/fhir",
        tenant=tenant,
        clinician=clinician.token,
        patient=keys.mint(tenant_id=tenant, roles=["patient"], patient_id="p1"),
        shown=shown,
        draft=draft,
        void=void,
        create_command=created["command_id"],
    )


def parts(plan: Plan) -> list[tuple[str, str]]:
    return [("Goal", plan.goal), ("Task", plan.task), ("CareTeam", plan.team)]


# --- row 2: a patient by any sign without a usable patient_id sees nothing ---


@pytest.mark.parametrize(
    "claims",
    [
        {"roles": ["patient"]},
        {"roles": ["patient"], "extra": {"patient_id": None}},
        {"roles": ["clinician"], "extra": {"scope": "patient/*.read"}},
        {"roles": ["patient"], "extra": {"patient_id": ""}},
        {"roles": ["patient"], "extra": {"patient_id": ["p1"]}},
    ],
)
async def test_a_patient_token_without_a_patient_id_reads_nothing(
    walls: Walls, keys: DevKeys, nc: NatsClient, claims: dict[str, Any]
) -> None:
    token = keys.mint(tenant_id=walls.tenant, **claims)
    for path in (
        "CarePlan",
        f"CarePlan/{walls.shown.plan}",
        f"Goal/{walls.draft.goal}/_history",
        "Provenance",
    ):
        status, body = await fhir_get(f"{walls.base}/{path}", token)
        assert status == 401, (path, body)
        assert body["resourceType"] == "OperationOutcome"
    assert (await ask_outcome(nc, walls.create_command, token))["error"]["code"] == "UNAUTHENTICATED"


async def test_a_tenant_id_with_a_trailing_newline_is_refused(
    walls: Walls, keys: DevKeys, nc: NatsClient
) -> None:
    """`$` matches before a final newline: such a tenant's events would get a subject no broker takes."""
    token = keys.mint(tenant_id=f"{walls.tenant}\n", roles=["clinician"])
    status, _ = await fhir_get(f"{walls.base}/CarePlan", token)
    assert status == 401
    reply = await Caller(nc, "", token).send("careplan.create", {"patient_id": "p1", "title": "Plan"})
    assert reply["error"]["code"] == "UNAUTHENTICATED"


# --- row 6: nothing of a hidden plan ---


async def test_the_parts_of_a_shown_plan_are_the_patients(walls: Walls) -> None:
    for resource_type, resource_id in parts(walls.shown):
        status, _ = await fhir_get(f"{walls.base}/{resource_type}/{resource_id}", walls.patient)
        assert status == 200, (resource_type, resource_id)


@pytest.mark.parametrize("hidden", ["draft", "void"])
async def test_read_vread_and_history_of_a_hidden_plans_parts_are_404(walls: Walls, hidden: str) -> None:
    plan: Plan = getattr(walls, hidden)
    for resource_type, resource_id in parts(plan):
        for path in (f"{resource_id}", f"{resource_id}/_history/1", f"{resource_id}/_history"):
            status, body = await fhir_get(f"{walls.base}/{resource_type}/{path}", walls.patient)
            assert status == 404, (resource_type, path, body)
            status, _ = await fhir_get(f"{walls.base}/{resource_type}/{path}", walls.clinician)
            assert status == 200, (resource_type, path)


async def test_search_and_type_history_show_only_the_shown_plans_parts(walls: Walls) -> None:
    for resource_type, resource_id in parts(walls.shown):
        status, bundle = await fhir_get(
            f"{walls.base}/{resource_type}", walls.patient, params={"_count": "200"}
        )
        assert status == 200
        assert ids(bundle) == [resource_id], resource_type
        status, bundle = await fhir_get(f"{walls.base}/{resource_type}/_history", walls.patient)
        assert status == 200
        assert {e["resource"]["id"] for e in bundle.get("entry", [])} == {resource_id}, resource_type
        status, bundle = await fhir_get(
            f"{walls.base}/{resource_type}", walls.clinician, params={"_count": "200"}
        )
        assert len(ids(bundle)) == 3, resource_type  # the clinician sees all three plans' parts


async def test_includes_reach_no_hidden_part(walls: Walls) -> None:
    hidden = {f"{t}/{i}" for plan in (walls.draft, walls.void) for t, i in parts(plan)}
    for resource_type, params in [
        (
            "CarePlan",
            [
                ("_include", "CarePlan:goal"),
                ("_include", "CarePlan:care-team"),
                ("_include", "CarePlan:activity-reference"),
                ("_revinclude", "Task:based-on"),
                ("_revinclude", "Provenance:target"),
            ],
        ),
        ("Task", [("_include", "Task:based-on"), ("_revinclude", "Provenance:target")]),
        ("Goal", [("_revinclude", "Provenance:target")]),
    ]:
        status, bundle = await fhir_get(f"{walls.base}/{resource_type}", walls.patient, params=params)
        assert status == 200, bundle
        assert not (typed_ids(bundle, "match") | typed_ids(bundle, "include")) & hidden
        status, bundle = await fhir_get(f"{walls.base}/{resource_type}", walls.clinician, params=params)
        assert (typed_ids(bundle, "match") | typed_ids(bundle, "include")) & hidden, resource_type


async def test_the_audit_of_a_hidden_plans_parts_is_hidden(walls: Walls) -> None:
    """A goal's update changes the goal alone: its Provenance names no plan, yet it is the draft's."""
    for plan in (walls.draft, walls.void):
        for resource_type, resource_id in parts(plan):
            target = {"target": f"{resource_type}/{resource_id}"}
            status, bundle = await fhir_get(f"{walls.base}/Provenance", walls.patient, params=target)
            assert status == 200
            assert ids(bundle) == [], target
            status, bundle = await fhir_get(f"{walls.base}/Provenance", walls.clinician, params=target)
            assert ids(bundle), target
            for provenance_id in ids(bundle):
                status, _ = await fhir_get(f"{walls.base}/Provenance/{provenance_id}", walls.patient)
                assert status == 404
    status, bundle = await fhir_get(f"{walls.base}/Provenance", walls.patient, params={"patient": "p1"})
    shown = {f"CarePlan/{walls.shown.plan}", *(f"{t}/{i}" for t, i in parts(walls.shown))}
    targets = {t["reference"].split("/_history")[0] for e in bundle["entry"] for t in e["resource"]["target"]}
    assert targets == shown


# --- row 7: command outcomes are not for patients ---


async def test_a_patient_token_may_not_read_command_outcomes(walls: Walls, nc: NatsClient) -> None:
    assert (await ask_outcome(nc, walls.create_command, walls.patient))["error"]["code"] == "FORBIDDEN"
    url = walls.base.removesuffix("/fhir") + f"/api/v1/commands/{walls.create_command}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {walls.patient}"}) as response:
            assert response.status == 403
            assert (await response.json(content_type=None))["code"] == "FORBIDDEN"
        async with http.get(url, headers={"Authorization": f"Bearer {walls.clinician}"}) as response:
            assert response.status == 200
            assert (await response.json())["result"]["resource_type"] == "CarePlan"
