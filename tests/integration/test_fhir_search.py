"""FHIR search on real Postgres through the running app: every registered parameter, modifiers, prefixes,
sorting, paging, includes, and the tenant and patient walls around all of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.search_parameters import BY_TYPE, SEARCHABLE_TYPES, extract
from service.dev_identity import DevKeys
from service.runner import RunningService
from tests.integration.commands import Caller
from tests.integration.fhir_client import all_pages, fhir_get, ids, next_link, typed_ids

SNOMED = "http://snomed.info/sct"


@dataclass
class World:
    """Two patients in tenant A, one in tenant B; resources of every type, in several states."""

    base: str
    tenant_a: str
    tenant_b: str
    clinician_a: str
    clinician_b: str
    patient_a1: str  # a patient token for pa1 in tenant A
    plan1: str  # pa1, active, period 2026-01-01..2026-06-30, goal, activity, team, review
    plan2: str  # pa1, draft
    plan3: str  # pa2, completed
    plan_b: str  # tenant B, pa1
    goal1: str
    goal3: str
    task1: str
    task3: str
    review1: str
    team1: str

    async def search(
        self, resource_type: str, params: Any = None, token: str | None = None
    ) -> dict[str, Any]:
        status, bundle = await fhir_get(
            f"{self.base}/{resource_type}", token or self.clinician_a, params=params
        )
        assert status == 200, bundle
        Bundle.model_validate(bundle)
        return bundle

    async def status_of(self, resource_type: str, params: Any, headers: dict[str, str] | None = None) -> int:
        status, _ = await fhir_get(
            f"{self.base}/{resource_type}", self.clinician_a, params=params, headers=headers
        )
        return status


@pytest.fixture(scope="module")
async def world(service: RunningService, nc: NatsClient, keys: DevKeys) -> World:
    tenant_a, tenant_b = f"sa{uuid.uuid4().hex[:10]}", f"sb{uuid.uuid4().hex[:10]}"
    a = Caller(nc, service.http_url, keys.mint(tenant_id=tenant_a, roles=["clinician"]))
    b = Caller(nc, service.http_url, keys.mint(tenant_id=tenant_b, roles=["clinician"]))
    plan1 = await a.ok(
        "careplan.create",
        {
            "patient_id": "pa1",
            "title": "Diabetes plan",
            "status": "active",
            "period": {"start": "2026-01-01", "end": "2026-06-30"},
            "categories": [{"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan"}]}],
            "addresses": [{"coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes"}]}],
            "author_id": "dr-1",
        },
    )
    goal1 = await a.ok(
        "goal.add",
        {
            "care_plan_id": plan1["id"],
            "description": {"text": "HbA1c below seven"},
            "lifecycle_status": "active",
            "achievement_status": "in-progress",
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/goal-category", "code": "dietary"}
                    ]
                }
            ],
            "start_date": "2026-01-15",
            "targets": [{"due_date": "2026-09-01"}],
        },
    )
    task1 = await a.ok(
        "activity.add",
        {
            "care_plan_id": plan1["id"],
            "description": "Education session",
            "code": {"coding": [{"system": SNOMED, "code": "385805005", "display": "Education"}]},
            "owner_id": "nurse-1",
            "priority": "urgent",
            "goal_ids": [goal1["id"]],
            "scheduled": {"end": "2026-12-15"},
        },
    )
    await a.ok("activity.change_status", {"activity_id": task1["id"], "status": "in-progress"}, 1)
    team1 = await a.ok(
        "careteam.add_member",
        {
            "care_plan_id": plan1["id"],
            "member_id": "dr-1",
            "role": {"coding": [{"system": SNOMED, "code": "158965000", "display": "Physician"}]},
        },
    )
    plan_version = 4  # create, goal, activity, team
    await a.ok("careplan.request_review", {"care_plan_id": plan1["id"], "reviewer_id": "dr-2"}, plan_version)
    plan2 = await a.ok("careplan.create", {"patient_id": "pa1", "title": "Draft plan", "status": "draft"})
    plan3 = await a.ok("careplan.create", {"patient_id": "pa2", "title": "Hypertension", "status": "active"})
    goal3 = await a.ok("goal.add", {"care_plan_id": plan3["id"], "description": {"text": "BP under control"}})
    task3 = await a.ok("activity.add", {"care_plan_id": plan3["id"], "description": "Measure BP"})
    await a.ok("careplan.change_status", {"care_plan_id": plan3["id"], "status": "completed"}, 3)
    plan_b = await b.ok(
        "careplan.create", {"patient_id": "pa1", "title": "Tenant B plan", "status": "active"}
    )
    status, reviews = await fhir_get(
        f"{service.http_url}/fhir/Task", a.token, params={"code": f"{SNOMED}|425268008"}
    )
    assert status == 200
    return World(
        base=f"{service.http_url}/fhir",
        tenant_a=tenant_a,
        tenant_b=tenant_b,
        clinician_a=a.token,
        clinician_b=b.token,
        patient_a1=keys.mint(tenant_id=tenant_a, roles=["patient"], patient_id="pa1"),
        plan1=plan1["id"],
        plan2=plan2["id"],
        plan3=plan3["id"],
        plan_b=plan_b["id"],
        goal1=goal1["id"],
        goal3=goal3["id"],
        task1=task1["id"],
        task3=task3["id"],
        review1=ids(reviews)[0],
        team1=team1["id"],
    )


async def current_resources(world: World) -> list[dict[str, Any]]:
    resources = []
    for resource_type in SEARCHABLE_TYPES:
        for page in await all_pages(f"{world.base}/{resource_type}", world.clinician_a, {"_count": "200"}):
            resources += [e["resource"] for e in page.get("entry", [])]
    return resources


# --- every registered parameter, positive and negative ---


async def test_every_indexed_value_finds_its_resource_and_a_foreign_value_does_not(world: World) -> None:
    checked: set[tuple[str, str]] = set()
    for resource in await current_resources(world):
        resource_type, resource_id = resource["resourceType"], resource["id"]
        values = extract(resource)
        for code, token in values.tokens:
            if token.code is None:
                continue
            query = f"{token.system}|{token.code}" if token.system else token.code
            assert resource_id in ids(await world.search(resource_type, {code: query})), (code, query)
            assert resource_id in ids(await world.search(resource_type, {code: token.code})), (
                code,
                token.code,
            )
            assert resource_id not in ids(await world.search(resource_type, {f"{code}:not": query})), code
            assert resource_id not in ids(
                await world.search(resource_type, {code: f"{token.system or ''}|no-such"})
            )
            checked.add((resource_type, code))
        for code, ref in values.references:
            if ref.ref_id is None:
                continue
            assert resource_id in ids(
                await world.search(resource_type, {code: f"{ref.ref_type}/{ref.ref_id}"})
            ), code
            assert resource_id in ids(
                await world.search(resource_type, {f"{code}:{ref.ref_type}": ref.ref_id})
            ), code
            assert resource_id not in ids(
                await world.search(resource_type, {code: f"{ref.ref_type}/nobody"})
            ), code
            checked.add((resource_type, code))
        for code, span in values.dates:
            edge = span.low or span.high
            assert edge is not None
            day = edge.date().isoformat()
            assert resource_id in ids(await world.search(resource_type, {code: f"ge{day}"})), code
            beyond = "gt2999-01-01" if span.high is not None else "lt1900-01-01"
            assert resource_id not in ids(await world.search(resource_type, {code: beyond})), code
            checked.add((resource_type, code))
        carried = {c for c, _ in [*values.tokens, *values.references, *values.dates, *values.strings]}
        checked |= {(resource_type, c) for c in carried}
        for code in carried:
            assert resource_id in ids(await world.search(resource_type, {f"{code}:missing": "false"})), code
            assert resource_id not in ids(await world.search(resource_type, {f"{code}:missing": "true"})), (
                code
            )
    # Parameters no resource of ours carries yet: :missing=true finds everything, a value finds nothing.
    for resource_type in SEARCHABLE_TYPES:
        everything = ids(await world.search(resource_type, {"_count": "200"}))
        for code, parameter in BY_TYPE[resource_type].items():
            if (resource_type, code) in checked:
                continue
            assert (
                ids(await world.search(resource_type, {f"{code}:missing": "true", "_count": "200"}))
                == everything
                or not everything
            )
            value = (
                "1990"
                if parameter.type == "date"
                else "X/nothing"
                if parameter.type == "reference"
                else "nothing"
            )
            assert ids(await world.search(resource_type, {code: value})) == [], (resource_type, code)
    assert ("CarePlan", "category") in checked
    assert ("Task", "based-on") in checked
    assert ("Goal", "target-date") in checked


async def test_the_patient_reference_is_searched_and_sorted_on_the_row_as_a_reference_is(
    world: World,
) -> None:
    """`patient`/`subject` read the row's patient_id (they have no index rows): every form of the value
    and of the type modifier answers as for any other reference."""
    pa1 = {world.plan1, world.plan2}
    for params in (
        {"patient": "pa1"},
        {"subject": "Patient/pa1"},
        {"subject:Patient": "pa1"},
        {"patient": "https://elsewhere.example/fhir/Patient/pa1"},
        {"patient": "Patient/pa1/_history/3"},
        {"subject": "Patient/nobody,Patient/pa1"},
    ):
        assert set(ids(await world.search("CarePlan", params))) == pa1, params
    for params in ({"subject:Group": "pa1"}, {"subject": "Group/pa1"}, {"patient": "Patient/nobody"}):
        assert ids(await world.search("CarePlan", params)) == [], params
    assert world.task1 in ids(await world.search("Task", {"patient": "Patient/pa1"}))
    assert world.task3 not in ids(await world.search("Task", {"patient": "Patient/pa1"}))
    by_id = ids(await world.search("CarePlan", {"_sort": "patient,_id", "_count": "50"}))
    by_id_descending = ids(await world.search("CarePlan", {"_sort": "patient,-_id", "_count": "50"}))
    for ordered in (by_id, by_id_descending):  # pa1's plans, then pa2's
        assert max(ordered.index(world.plan1), ordered.index(world.plan2)) < ordered.index(world.plan3)
    # Within one patient the next key decides.
    assert (by_id.index(world.plan1) < by_id.index(world.plan2)) != (
        by_id_descending.index(world.plan1) < by_id_descending.index(world.plan2)
    )


async def test_token_text_modifier_matches_display_words(world: World) -> None:
    assert world.task1 in ids(await world.search("Task", {"code:text": "educ"}))
    assert world.task1 not in ids(await world.search("Task", {"code:text": "surgery"}))
    assert world.plan1 in ids(await world.search("CarePlan", {"category:text": "care"}))


async def test_id_and_last_updated(world: World) -> None:
    assert ids(await world.search("CarePlan", {"_id": f"{world.plan1},{world.plan2}"})) == sorted(
        [world.plan1, world.plan2]
    )
    assert world.plan1 not in ids(await world.search("CarePlan", {"_id:not": world.plan1}))
    assert world.plan1 in ids(await world.search("CarePlan", {"_lastUpdated": "ge2026-01-01"}))
    assert ids(await world.search("CarePlan", {"_lastUpdated": "lt2000-01-01"})) == []


# --- dates: prefixes and precision on CarePlan.period 2026-01-01 .. 2026-06-30 ---


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("2026", True),  # eq: the whole period lies within 2026
        ("2026-03", False),  # eq: it does not lie within March
        ("ne2026-03", True),
        ("ge2026-06", True),
        ("gt2026-07", False),
        ("lt2026-01-02", True),
        ("le2025-12-31", False),
        ("sa2025-12-31", True),
        ("sa2026-01-01", False),
        ("eb2026-07-01", True),
        ("eb2026-06-15", False),
        ("ap2026-01", True),
        ("ap2024-01-01", False),
        ("ge2026-06-30T23:00:00Z", True),
        ("gt2026-06-30T23:59:59Z", False),
    ],
)
async def test_date_prefixes_follow_fhir_range_semantics(world: World, value: str, matches: bool) -> None:
    assert (world.plan1 in ids(await world.search("CarePlan", {"date": value}))) is matches


async def test_malformed_date_and_prefix_are_400(world: World) -> None:
    assert await world.status_of("CarePlan", {"date": "yesterday"}) == 400
    assert await world.status_of("CarePlan", {"date": "xx2026"}) == 400


# --- AND, OR, US Core combinations ---


async def test_comma_is_or_and_repetition_is_and(world: World) -> None:
    either = ids(await world.search("CarePlan", {"status": "active,completed"}))
    assert world.plan1 in either
    assert world.plan3 in either
    assert world.plan2 not in either
    both = await world.search("CarePlan", [("status", "active"), ("status", "completed")])
    assert ids(both) == []
    narrowed = await world.search("CarePlan", [("patient", "Patient/pa1"), ("status", "active")])
    assert ids(narrowed) == [world.plan1]


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        (
            "CarePlan",
            {
                "patient": "pa1",
                "category": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category|assess-plan",
            },
            "plan2",
        ),
        ("CarePlan", {"patient": "pa1", "category": f"{SNOMED}|734163000", "date": "ge2026-01-01"}, "plan1"),
        ("CarePlan", {"patient": "pa1", "category": f"{SNOMED}|734163000", "status": "active"}, "plan1"),
        ("Goal", {"patient": "pa1"}, "goal1"),
        ("Goal", {"patient": "pa1", "lifecycle-status": "active"}, "goal1"),
        ("Goal", {"patient": "pa1", "target-date": "le2026-12-31"}, "goal1"),
        ("CareTeam", {"patient": "pa1", "status": "active"}, "team1"),
        ("CareTeam", {"patient": "pa1", "role": f"{SNOMED}|158965000"}, "team1"),
        ("Task", {"based-on": "CarePlan/{plan1}", "status": "in-progress"}, "task1"),
        ("Task", {"owner": "Practitioner/nurse-1"}, "task1"),
    ],
)
async def test_us_core_search_combinations(
    world: World, resource_type: str, params: dict[str, str], expected: str
) -> None:
    filled = {k: v.format(plan1=world.plan1) for k, v in params.items()}
    assert getattr(world, expected) in ids(await world.search(resource_type, filled))


# --- sorting and paging ---


async def test_sort_by_several_keys_with_nulls_last_and_a_unique_tie_breaker(world: World) -> None:
    ordered = ids(await world.search("CarePlan", {"_sort": "date,-_lastUpdated"}))
    # plan1's period starts 2026-01-01; plan3's has only an end (set on completion) and plan2 has none:
    # both sort last, by the next key.
    assert ordered[0] == world.plan1
    ascending = ids(await world.search("CarePlan", {"_sort": "_lastUpdated"}))
    descending = ids(await world.search("CarePlan", {"_sort": "-_lastUpdated"}))
    assert ascending == list(reversed(descending))
    assert await world.status_of("CarePlan", {"_sort": "title"}) == 400


@pytest.mark.parametrize("sort", [None, "_lastUpdated", "-_lastUpdated", "status,-date", "-status,_id"])
async def test_paging_returns_every_match_exactly_once(world: World, sort: str | None) -> None:
    params = {"_count": "1"} | ({"_sort": sort} if sort else {})
    pages = await all_pages(f"{world.base}/CarePlan", world.clinician_a, params)
    seen = [i for page in pages for i in ids(page)]
    assert sorted(seen) == sorted({world.plan1, world.plan2, world.plan3})
    assert all(len(ids(page)) == 1 for page in pages)  # a next link never leads to an empty page


async def test_paging_under_concurrent_inserts_returns_each_original_match_once(
    world: World, service: RunningService, nc: NatsClient
) -> None:
    caller = Caller(nc, service.http_url, world.clinician_a)
    status, bundle = await fhir_get(f"{world.base}/Goal", world.clinician_a, params={"_count": "1"})
    seen = ids(bundle)
    while (link := next_link(bundle)) is not None:
        await caller.ok(
            "goal.add", {"care_plan_id": world.plan2, "description": {"text": "added while paging"}}
        )
        status, bundle = await fhir_get(link, world.clinician_a)
        assert status == 200
        seen += ids(bundle)
    assert len(seen) == len(set(seen))
    assert {world.goal1, world.goal3} <= set(seen)


async def test_no_next_link_when_the_page_holds_the_rest(world: World) -> None:
    bundle = await world.search("CarePlan", {"_count": "3"})
    assert len(ids(bundle)) == 3
    assert next_link(bundle) is None


async def test_tampered_foreign_and_mixed_cursors_are_400(world: World) -> None:
    bundle = await world.search("CarePlan", {"_count": "1"})
    link = next_link(bundle)
    assert link is not None
    assert (await fhir_get(link.replace("_cursor=", "_cursor=x"), world.clinician_a))[0] == 400
    assert (await fhir_get(link, world.clinician_b))[0] == 400
    assert (await fhir_get(link + "&status=active", world.clinician_a))[0] == 400
    assert (await fhir_get(link.replace("/CarePlan?", "/Goal?"), world.clinician_a))[0] == 400


async def test_a_next_link_takes_what_real_clients_add_beside_the_cursor(world: World) -> None:
    """MedplumClient appends `_count` to a `next` link, other clients `_format`/`_pretty`: the page goes on
    from the same place; a parameter that would change the query is still refused."""
    bundle = await world.search("CarePlan", {"_count": "1", "_sort": "_id"})
    first = ids(bundle)
    link = next_link(bundle)
    assert link is not None
    status, medplum = await fhir_get(link + "&_count=1000", world.clinician_a)
    assert status == 200, medplum
    assert first[0] not in ids(medplum) and len(ids(medplum)) == 2  # the rest, capped at 200 a page
    for extra in ("&_format=json", "&_pretty=true", "&_format=application/fhir%2Bjson&_count=1"):
        status, page = await fhir_get(link + extra, world.clinician_a)
        assert status == 200, (extra, page)
        assert ids(page)[0] != first[0]
    status, refused = await fhir_get(link + "&_sort=-_id", world.clinician_a)
    assert status == 400 and "_sort" in refused["issue"][0]["diagnostics"]


async def test_a_request_that_accepts_only_xml_is_406_in_json(world: World) -> None:
    for headers, params in (({"Accept": "application/fhir+xml"}, None), ({}, {"_format": "xml"})):
        status, outcome = await fhir_get(
            f"{world.base}/CarePlan", world.clinician_a, headers=headers, params=params
        )
        assert status == 406
        assert outcome["resourceType"] == "OperationOutcome"


# --- totals, summaries, elements ---


async def test_total_modes(world: World) -> None:
    assert "total" not in await world.search("CarePlan", {})
    assert (await world.search("CarePlan", {"_total": "accurate", "_count": "1"}))["total"] == 3
    assert (await world.search("CarePlan", {"_total": "estimate"}))["total"] >= 1
    counted = await world.search("CarePlan", {"_summary": "count"})
    assert counted["total"] == 3
    assert "entry" not in counted


async def test_summary_and_elements_cut_resources_and_say_so(world: World) -> None:
    summary = (await world.search("CarePlan", {"_id": world.plan1, "_summary": "true"}))["entry"][0][
        "resource"
    ]
    assert "text" not in summary
    assert summary["status"] == "active"
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    # (an _elements subset may drop required elements, so it is not validated as a CarePlan)
    _, bundle = await fhir_get(
        f"{world.base}/CarePlan", world.clinician_a, params={"_id": world.plan1, "_elements": "status,title"}
    )
    only = bundle["entry"][0]["resource"]
    assert set(only) == {"resourceType", "id", "meta", "status", "title"}


# --- includes ---


async def test_includes_and_revincludes(world: World) -> None:
    plan = {"_id": world.plan1}
    assert typed_ids(await world.search("CarePlan", plan | {"_include": "CarePlan:goal"}), "include") == {
        f"Goal/{world.goal1}"
    }
    assert f"CareTeam/{world.team1}" in typed_ids(
        await world.search("CarePlan", plan | {"_include": "CarePlan:care-team"}), "include"
    )
    assert typed_ids(
        await world.search("CarePlan", plan | {"_include": "CarePlan:activity-reference:Task"}), "include"
    ) == {f"Task/{world.task1}"}
    assert (
        typed_ids(await world.search("CarePlan", plan | {"_include": "CarePlan:subject"}), "include") == set()
    )
    revinclude = typed_ids(await world.search("CarePlan", plan | {"_revinclude": "Task:based-on"}), "include")
    assert revinclude == {f"Task/{world.task1}"}  # the review Task focuses on the plan; it is not based on it
    provenance = await world.search("CarePlan", plan | {"_revinclude": "Provenance:target"})
    assert any(t.startswith("Provenance/") for t in typed_ids(provenance, "include"))


async def test_include_iterate_goes_one_level(world: World) -> None:
    bundle = await world.search(
        "Goal", {"_id": world.goal1, "_revinclude": "CarePlan:goal", "_include:iterate": "CarePlan:care-team"}
    )
    assert typed_ids(bundle, "include") == {f"CarePlan/{world.plan1}", f"CareTeam/{world.team1}"}


@pytest.mark.parametrize(
    "params",
    [
        {"_include": "CarePlan:nonsense"},
        {"_include": "Goal:patient"},
        {"_include": "CarePlan:status"},
        {"_revinclude": "Task:owner"},
        {"_include": "CarePlan"},
    ],
)
async def test_bad_includes_are_400(world: World, params: dict[str, str]) -> None:
    assert await world.status_of("CarePlan", params) == 400


# --- the walls: tenant and patient, in the main query and in every include branch ---


async def test_tenants_never_see_each_other(world: World) -> None:
    assert world.plan_b not in ids(await world.search("CarePlan", {"patient": "pa1"}))
    b = ids(await world.search("CarePlan", {"patient": "pa1"}, token=world.clinician_b))
    assert b == [world.plan_b]


async def test_patient_token_sees_only_own_non_draft_resources(world: World) -> None:
    plans = ids(await world.search("CarePlan", {}, token=world.patient_a1))
    assert plans == [world.plan1]
    goals = ids(await world.search("Goal", {}, token=world.patient_a1))
    assert world.goal3 not in goals
    assert world.goal1 in goals
    asking_for_other = ids(await world.search("Goal", {"patient": "pa2"}, token=world.patient_a1))
    assert asking_for_other == []


async def test_include_branches_apply_the_patient_and_tenant_filters(
    world: World, admin_engine: AsyncEngine
) -> None:
    # Given index links, planted on purpose, from pa1's plan to pa2's goal and to tenant B's plan
    async with admin_engine.begin() as conn:
        for ref_type, ref_id in (("Goal", world.goal3), ("CarePlan", world.plan_b)):
            await conn.execute(
                text(
                    "INSERT INTO search_reference "
                    "(tenant_id, resource_type, resource_id, param, ref_type, ref_id) "
                    "VALUES (:t, 'CarePlan', :p, :param, :rt, :rid)"
                ),
                {
                    "t": world.tenant_a,
                    "p": world.plan1,
                    "param": "goal" if ref_type == "Goal" else "part-of",
                    "rt": ref_type,
                    "rid": ref_id,
                },
            )
    query = {"_id": world.plan1, "_include": ["CarePlan:goal", "CarePlan:part-of"]}
    # Then the clinician sees the cross-patient link, the patient does not, and nobody sees tenant B
    clinician = typed_ids(await world.search("CarePlan", query), "include")
    patient = typed_ids(await world.search("CarePlan", query, token=world.patient_a1), "include")
    assert f"Goal/{world.goal3}" in clinician
    assert f"Goal/{world.goal3}" not in patient
    assert f"CarePlan/{world.plan_b}" not in clinician | patient
    revinclude = await world.search(
        "Goal", {"_id": world.goal3, "_revinclude": "CarePlan:goal"}, token=world.patient_a1
    )
    assert ids(revinclude) == []


# --- strictness, errors, POST ---


async def test_unknown_parameters_are_refused_unless_lenient(world: World) -> None:
    assert await world.status_of("CarePlan", {"colour": "blue"}) == 400
    status, bundle = await fhir_get(
        f"{world.base}/CarePlan",
        world.clinician_a,
        params={"colour": "blue"},
        headers={"Prefer": "handling=lenient"},
    )
    assert status == 200
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "params",
    [
        {"status:exact": "active"},
        {"date:not": "2026"},
        {"status:missing": "maybe"},
        {"_count": "-1"},
        {"_count": "many"},
        {"_total": "some"},
        {"_summary": "data"},
        {"status": ""},
        {"subject.name": "x"},
    ],
)
async def test_malformed_searches_are_400_operation_outcomes(world: World, params: dict[str, str]) -> None:
    status, body = await fhir_get(f"{world.base}/CarePlan", world.clinician_a, params=params)
    assert status == 400
    assert body["resourceType"] == "OperationOutcome"


async def test_count_over_the_maximum_is_clamped(world: World) -> None:
    bundle = await world.search("CarePlan", {"_count": "5000"})
    assert "_count=200" in bundle["link"][0]["url"]
    assert [link["relation"] for link in bundle["link"]] == ["self", "first"]


async def test_post_search_matches_get(world: World) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{world.base}/CarePlan/_search",
            data={"patient": "pa1", "status": "active"},
            headers={"Authorization": f"Bearer {world.clinician_a}"},
        ) as response:
            assert response.status == 200
            posted = await response.json(content_type=None)
        async with http.post(
            f"{world.base}/CarePlan/_search",
            json={"patient": "pa1"},
            headers={"Authorization": f"Bearer {world.clinician_a}"},
        ) as response:
            assert response.status == 415
    assert ids(posted) == [world.plan1]


async def test_search_without_a_token_is_401(world: World) -> None:
    status, body = await fhir_get(f"{world.base}/CarePlan", None)
    assert status == 401
    assert body["resourceType"] == "OperationOutcome"


# --- metadata lists exactly the registry ---


async def test_capability_statement_lists_exactly_the_registry(world: World) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    status, statement = await fhir_get(f"{world.base}/metadata", None)
    assert status == 200
    CapabilityStatement.model_validate(statement)
    for entry in statement["rest"][0]["resource"]:
        if entry["type"] == "Provenance":
            continue
        listed = {p["name"] for p in entry["searchParam"]}
        assert listed == set(BY_TYPE[entry["type"]]) | {"_id", "_lastUpdated"}


# --- a real FHIR client ---


async def test_fhirpy_searches_and_pages(world: World) -> None:
    from fhirpy import AsyncFHIRClient

    client = AsyncFHIRClient(world.base, authorization=f"Bearer {world.clinician_a}")
    found = await client.resources("CarePlan").search(patient="pa1").sort("_lastUpdated").limit(1).fetch_all()
    assert {r["id"] for r in found} == {world.plan1, world.plan2}
    goal = await client.reference("Goal", world.goal1).to_resource()
    assert goal["lifecycleStatus"] == "active"
    in_progress = await client.resources("Task").search(status="in-progress").fetch_all()
    assert [t["id"] for t in in_progress] == [world.task1]


# --- indexes back the searches ---


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT resource_id FROM search_token WHERE tenant_id = 't' AND resource_type = 'CarePlan' "
        "AND param = 'status' AND code = 'active'",
        "SELECT resource_id FROM search_reference WHERE tenant_id = 't' AND resource_type = 'Task' "
        "AND param = 'based-on' AND ref_id = 'x'",
        "SELECT resource_id FROM search_date WHERE tenant_id = 't' AND resource_type = 'Goal' "
        "AND param = 'target-date' AND low >= now()",
        "SELECT id FROM care_plans WHERE tenant_id = 't' ORDER BY last_updated, id LIMIT 10",
    ],
)
async def test_an_index_backs_each_kind_of_search(admin_engine: AsyncEngine, sql: str, world: World) -> None:
    async with admin_engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(row[0] for row in (await conn.execute(text(f"EXPLAIN {sql}"))).all())
    assert "Index" in plan, plan


async def test_search_results_validate_as_fhir(world: World) -> None:
    from fhir.resources.R4B.careplan import CarePlan
    from fhir.resources.R4B.careteam import CareTeam
    from fhir.resources.R4B.goal import Goal
    from fhir.resources.R4B.task import Task

    models: dict[str, type[BaseModel]] = {
        "CarePlan": CarePlan,
        "Goal": Goal,
        "Task": Task,
        "CareTeam": CareTeam,
    }
    resources = await current_resources(world)
    assert len(resources) >= 8
    for resource in resources:
        models[resource["resourceType"]].model_validate(resource)


@pytest.mark.parametrize(
    "params",
    [
        {"_id": "\x00"},
        {"patient": "\x00"},
        {"date": "lt0001-01-01T00:00:00+14:00"},
        {"_lastUpdated": "ge9999-12-31T23:59:59-14:00"},
    ],
)
async def test_hostile_values_are_400_not_500(world: World, params: dict[str, str]) -> None:
    assert await world.status_of("CarePlan", params) == 400


async def test_read_of_a_malformed_id_is_404(world: World) -> None:
    status, body = await fhir_get(f"{world.base}/CarePlan/%00", world.clinician_a)
    assert status == 404
    assert body["resourceType"] == "OperationOutcome"


async def test_lenient_means_exactly_handling_lenient(world: World) -> None:
    assert await world.status_of("CarePlan", {"colour": "x"}, headers={"Prefer": "handling=lenientx"}) == 400
    assert (
        await world.status_of(
            "CarePlan", {"colour": "x"}, headers={"Prefer": "return=minimal, handling=lenient"}
        )
        == 200
    )


async def test_patient_does_not_see_the_audit_of_a_hidden_plan(world: World) -> None:
    own_draft = {"_id": world.plan2, "_revinclude": "Provenance:target"}
    assert ids(await world.search("CarePlan", own_draft, token=world.patient_a1)) == []
    status, bundle = await fhir_get(
        f"{world.base}/Provenance", world.patient_a1, params={"target": f"CarePlan/{world.plan2}"}
    )
    assert status == 200
    assert ids(bundle) == []
    status, bundle = await fhir_get(
        f"{world.base}/Provenance", world.clinician_a, params={"target": f"CarePlan/{world.plan2}"}
    )
    assert ids(bundle)
