"""SMART App Launch 2 scopes through the real service (CONTRACT §13): every read path — read, vread, instance
and type history, search, `_include`, `_revinclude`, Provenance — under v1, v2 type-level and v2 granular
scopes, `r` without `s` and `s` without `r`, patient, user and system contexts; a resource outside the
scopes is 404 as if absent, a type without a read scope is 403; a cursor does not carry one token's scopes
into another's page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from domain.scopes import matches, read_scopes
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller
from tests.integration.fhir_client import fhir_get, ids, next_link, typed_ids

ASSESS = {"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan"}
OTHER = {"system": "http://snomed.info/sct", "code": "734163000", "display": "Care plan"}
ASSESS_SCOPE = f"CarePlan.rs?category={ASSESS['system']}|{ASSESS['code']}"


@dataclass
class World:
    """One tenant: plan `assess` (category assess-plan, a goal and a task), plan `other` (another category,
    a goal), plan `held` (assess-plan, active at version 1, on hold since), all of patient p1; plan `p2` of
    another patient."""

    assess: str
    other: str
    held: str
    p2: str
    assess_goal: str
    other_goal: str
    assess_task: str


@pytest.fixture
async def world(service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory) -> World:
    caller = Caller(nc, service.http_url, token_for(tenant))

    async def plan(category: dict[str, str], patient: str = "p1") -> str:
        data = {
            "patient_id": patient,
            "title": "Plan",
            "status": "active",
            "categories": [{"coding": [category]}],
        }
        plan_id: str = (await caller.ok("careplan.create", data))["id"]
        return plan_id

    assess, other, held, p2 = (
        await plan(ASSESS),
        await plan(OTHER),
        await plan(ASSESS),
        await plan(ASSESS, "p2"),
    )
    goal = {"description": {"text": "HbA1c below 7 %"}, "lifecycle_status": "active"}
    assess_goal = (await caller.ok("goal.add", {"care_plan_id": assess, **goal}))["id"]
    other_goal = (await caller.ok("goal.add", {"care_plan_id": other, **goal}))["id"]
    assess_task = (await caller.ok("activity.add", {"care_plan_id": assess, "description": "HbA1c test"}))[
        "id"
    ]
    await caller.ok("careplan.change_status", {"care_plan_id": held, "status": "on-hold"}, 1)
    return World(assess, other, held, p2, assess_goal, other_goal, assess_task)


def scoped(token_for: TokenFactory, tenant: str, *scopes: str, patient_id: str | None = None) -> str:
    """A clinician's token (roles would let it read everything) whose `scope` claim says otherwise."""
    roles = ["patient"] if patient_id else ["clinician"]
    return token_for(tenant, roles=roles, patient_id=patient_id, extra={"scope": " ".join(scopes)})


async def status_of(service: RunningService, token: str, path: str, **params: str) -> int:
    status, _ = await fhir_get(f"{service.http_url}/fhir/{path}", token, params=params or None)
    return status


async def search(service: RunningService, token: str, resource_type: str, **params: str) -> dict[str, Any]:
    status, bundle = await fhir_get(f"{service.http_url}/fhir/{resource_type}", token, params=params)
    assert status == 200, bundle
    return bundle


async def test_read_by_id_under_each_scope_form(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    cases: dict[str, tuple[list[str], dict[str, int]]] = {
        "v1 wildcard": (
            ["user/*.read"],
            {
                f"CarePlan/{world.assess}": 200,
                f"CarePlan/{world.other}": 200,
                f"Goal/{world.other_goal}": 200,
            },
        ),
        "v2 type-level": (
            ["user/CarePlan.rs"],
            {
                f"CarePlan/{world.other}": 200,
                f"Goal/{world.assess_goal}": 403,
                f"Task/{world.assess_task}": 403,
            },
        ),
        "v2 granular": (
            [f"user/{ASSESS_SCOPE}"],
            {f"CarePlan/{world.assess}": 200, f"CarePlan/{world.other}": 404, f"CarePlan/{world.held}": 200},
        ),
        "r without s": (["user/CarePlan.r"], {f"CarePlan/{world.assess}": 200}),
        "s without r": (["user/CarePlan.s"], {f"CarePlan/{world.assess}": 403}),
        "system context": (["system/CarePlan.rs?status=active"], {f"CarePlan/{world.held}": 404}),
        "only what the service ignores": (
            ["user/CarePlan.rs?bogus=1", "user/Observation.rs"],
            {f"CarePlan/{world.assess}": 403},
        ),
        "v1 write": (["user/CarePlan.write"], {f"CarePlan/{world.assess}": 403}),
    }
    for name, (scopes, expected) in cases.items():
        token = scoped(token_for, tenant, *scopes)
        got = {path: await status_of(service, token, path) for path in expected}
        assert got == expected, name


async def test_patient_scopes_keep_the_patients_walls(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    token = scoped(token_for, tenant, f"patient/{ASSESS_SCOPE}", patient_id="p1")
    bundle = await search(service, token, "CarePlan")
    assert sorted(ids(bundle)) == sorted([world.assess, world.held])  # p2's is assess-plan too: not theirs
    assert await status_of(service, token, f"CarePlan/{world.p2}") == 404
    # A patient/ scope without the patient_id claim is no token at all (domain.access.Principal).
    no_patient = token_for(tenant, roles=["clinician"], extra={"scope": f"patient/{ASSESS_SCOPE}"})
    assert await status_of(service, no_patient, f"CarePlan/{world.assess}") == 401


async def test_search_needs_s_and_shows_only_what_the_scopes_cover(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    granular = scoped(token_for, tenant, f"user/{ASSESS_SCOPE}")
    assert sorted(ids(await search(service, granular, "CarePlan"))) == sorted(
        [world.assess, world.held, world.p2]
    )
    assert ids(await search(service, granular, "CarePlan", category="734163000")) == []  # other: outside
    # several scopes of a type are OR-ed; within one, the criteria are AND-ed
    either = scoped(token_for, tenant, f"user/{ASSESS_SCOPE}&status=on-hold", "user/CarePlan.rs?patient=p2")
    assert sorted(ids(await search(service, either, "CarePlan"))) == sorted([world.held, world.p2])
    assert await status_of(service, scoped(token_for, tenant, "user/CarePlan.r"), "CarePlan") == 403
    assert await status_of(service, scoped(token_for, tenant, "user/Goal.rs"), "CarePlan") == 403
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{service.http_url}/fhir/CarePlan/_search",
            data={"status": "active"},
            headers={"Authorization": f"Bearer {scoped(token_for, tenant, 'user/CarePlan.r')}"},
        ) as response,
    ):
        assert response.status == 403  # POST _search is a search too


async def test_includes_and_revincludes_never_reach_outside_the_scopes(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    # Goals are readable only under the assess-plan plan's... by their own scope: the goal of `other` is not
    both = scoped(token_for, tenant, "user/CarePlan.rs", f"user/Goal.rs?_id={world.assess_goal}")
    bundle = await search(service, both, "CarePlan", _include="CarePlan:goal")
    assert typed_ids(bundle, "include") == {f"Goal/{world.assess_goal}"}
    # A type without any read scope is left out of includes, not refused
    plans_only = scoped(token_for, tenant, "user/CarePlan.rs")
    bundle = await search(
        service, plans_only, "CarePlan", _include="CarePlan:goal", _revinclude="Task:based-on"
    )
    assert typed_ids(bundle, "include") == set()
    # _revinclude with Task under a narrow Task scope, and :iterate beyond it
    tasks = scoped(token_for, tenant, "user/CarePlan.rs", "user/Task.rs?status=cancelled", "user/Goal.r")
    bundle = await search(service, tasks, "CarePlan", _revinclude="Task:based-on")
    assert typed_ids(bundle, "include") == set()  # the task is requested/draft, not cancelled
    iterate = scoped(token_for, tenant, "user/Goal.rs", f"user/{ASSESS_SCOPE}")
    bundle = await search(service, iterate, "Goal", _revinclude="CarePlan:goal")
    assert typed_ids(bundle, "include") == {f"CarePlan/{world.assess}"}  # not `other`, outside CarePlan's


async def test_provenance_of_a_resource_outside_the_scopes_is_hidden(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    audit = scoped(token_for, tenant, "user/Provenance.rs", f"user/{ASSESS_SCOPE}")
    targets = [
        target
        for entry in (await search(service, audit, "Provenance", _count="200"))["entry"]
        for target in (t["reference"] for t in entry["resource"]["target"])
    ]
    assert targets and all(t.startswith("CarePlan/") for t in targets)  # goal.add's audit names a Goal too
    assert f"CarePlan/{world.other}" not in {t.split("/_history")[0] for t in targets}
    other_audit = await search(
        service, scoped(token_for, tenant, "user/*.rs"), "Provenance", target=f"CarePlan/{world.other}"
    )
    (first,) = [e["resource"]["id"] for e in other_audit["entry"]][:1]
    assert await status_of(service, audit, f"Provenance/{first}") == 404
    assert await status_of(service, scoped(token_for, tenant, "user/*.rs"), f"Provenance/{first}") == 200
    assert await status_of(service, scoped(token_for, tenant, f"user/{ASSESS_SCOPE}"), "Provenance") == 403
    bundle = await search(service, audit, "CarePlan", _id=world.other, _revinclude="Provenance:target")
    assert ids(bundle) == [] and typed_ids(bundle, "include") == set()


async def test_history_and_vread_judge_each_version(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    active = scoped(token_for, tenant, "user/CarePlan.rs?status=active")
    # `held` was active at version 1 and is on hold since version 2
    assert await status_of(service, active, f"CarePlan/{world.held}") == 404
    assert await status_of(service, active, f"CarePlan/{world.held}/_history/1") == 200
    assert await status_of(service, active, f"CarePlan/{world.held}/_history/2") == 404
    status, history = await fhir_get(f"{service.http_url}/fhir/CarePlan/{world.held}/_history", active)
    assert status == 200
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
    held_only = scoped(token_for, tenant, "user/CarePlan.rs?status=on-hold")
    status, _ = await fhir_get(f"{service.http_url}/fhir/CarePlan/{world.assess}/_history", held_only)
    assert status == 404  # not one version of it was ever on hold
    status, everything = await fhir_get(
        f"{service.http_url}/fhir/CarePlan/_history", active, params={"_count": "2"}
    )
    assert status == 200
    seen: list[tuple[str, str]] = []
    page: dict[str, Any] | None = everything
    while page is not None:
        seen += [(e["resource"]["id"], e["resource"]["status"]) for e in page.get("entry", [])]
        link = next_link(page)
        page = (await fhir_get(link, active))[1] if link else None
    assert {s for _, s in seen} == {"active"}
    assert (world.held, "active") in seen and world.other in {i for i, _ in seen}
    assert (
        await status_of(service, scoped(token_for, tenant, "user/Goal.rs"), f"CarePlan/{world.held}/_history")
        == 403
    )


async def test_a_cursor_does_not_carry_one_tokens_scopes_into_another_page(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    wide = scoped(token_for, tenant, "user/CarePlan.rs")
    narrow = scoped(token_for, tenant, f"user/{ASSESS_SCOPE}")
    first = await search(service, wide, "CarePlan", _count="1", _sort="_id")
    link = next_link(first)
    assert link is not None
    status, refused = await fhir_get(link, narrow)
    assert status == 400, refused
    # and the narrow token's own pages hold only what it covers
    seen: list[str] = []
    page: dict[str, Any] | None = await search(service, narrow, "CarePlan", _count="1", _sort="_id")
    while page is not None:
        seen += ids(page)
        link = next_link(page)
        page = (await fhir_get(link, narrow))[1] if link else None
    assert sorted(seen) == sorted([world.assess, world.held, world.p2])


async def test_a_token_without_a_scope_claim_reads_by_its_roles(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    clinician = token_for(tenant)
    assert await status_of(service, clinician, f"Goal/{world.other_goal}") == 200
    assert len(ids(await search(service, clinician, "CarePlan"))) == 4
    # an empty claim is a claim: it grants no reads
    assert await status_of(service, token_for(tenant, extra={"scope": ""}), f"CarePlan/{world.assess}") == 403


CONSISTENCY_QUERIES = {
    "CarePlan": [
        f"category={ASSESS['system']}|{ASSESS['code']}",
        "category=734163000",
        "category:not=assess-plan",
        "status=active,on-hold",
        "status:not=active",
        "patient=p2",
        "subject=Patient/p1",
        "goal:missing=true",
        "date=ge2020-01-01",
        "_lastUpdated=ge2020-01-01",
        "intent=plan&status=active",
    ],
    "Goal": ["lifecycle-status=active", "achievement-status:missing=true", "patient=p1"],
    "Task": ["status=draft,requested", "owner:missing=true", "patient=p1"],
}


async def test_a_version_is_judged_in_python_as_the_search_judges_it_in_sql(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory
) -> None:
    """History and vread judge stored versions with domain.scopes.matches; searches and reads compile the
    same criteria into SQL. On the current versions both must agree, query by query."""
    staff = token_for(tenant)
    for resource_type, queries in CONSISTENCY_QUERIES.items():
        everything = await search(service, staff, resource_type, _count="200")
        resources = [e["resource"] for e in everything["entry"]]
        assert resources, resource_type
        for query in queries:
            scopes = read_scopes([f"user/{resource_type}.rs?{query}"])
            assert scopes is not None and scopes.searching(resource_type) is not None, query
            in_python = {r["id"] for r in resources if matches(r, scopes.searching(resource_type))}
            token = scoped(token_for, tenant, f"user/{resource_type}.rs?{query}")
            in_sql = set(ids(await search(service, token, resource_type, _count="200")))
            assert in_python == in_sql, (resource_type, query)


async def test_smart_configuration_and_the_capability_statement_say_what_is_honoured(
    service: RunningService,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{service.http_url}/fhir/.well-known/smart-configuration") as response,
    ):
        assert response.status == 200  # public: an app reads it before it has a token
        configuration = await response.json()
    assert configuration["capabilities"] == [
        "permission-v1",
        "permission-v2",
        "permission-patient",
        "permission-user",
    ]
    assert {"patient/CarePlan.rs", "user/*.read", "system/Provenance.rs"} <= set(
        configuration["scopes_supported"]
    )
    assert "authorization_endpoint" not in configuration  # not configured in the tests: left out
    status, capability = await fhir_get(f"{service.http_url}/fhir/metadata", None)
    assert status == 200
    security = capability["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert "granular" in security["description"] and "_revinclude" in security["description"]


FORMS = {
    "v1 wildcard": ["user/*.read"],
    "v2 type-level": ["user/CarePlan.rs", "user/Provenance.rs"],
    "v2 granular": [f"user/{ASSESS_SCOPE}", "user/Provenance.rs"],
    "r without s": ["user/*.r"],
    "patient": ["patient/*.rs"],
    "system": ["system/CarePlan.rs"],
}


@pytest.mark.parametrize("form", FORMS)
async def test_every_read_path_under_each_scope_form(
    service: RunningService, world: World, tenant: str, token_for: TokenFactory, form: str
) -> None:
    """One row of the matrix: each read path's status for an in-scope plan (`assess`) and one outside a
    granular scope (`other`), and whether the path's search (if any) may run."""
    token = scoped(token_for, tenant, *FORMS[form], patient_id="p1" if form == "patient" else None)
    granular = form == "v2 granular"
    search_ok = form != "r without s"
    provenance_ok = form not in ("system",)  # a scope names Provenance, or `*` does
    paths = {
        f"CarePlan/{world.assess}": 200,
        f"CarePlan/{world.other}": 404 if granular else 200,
        f"CarePlan/{world.assess}/_history/1": 200,
        f"CarePlan/{world.other}/_history/1": 404 if granular else 200,
        f"CarePlan/{world.other}/_history": 404 if granular else 200,
        "CarePlan/_history": 200,
        "CarePlan": 200 if search_ok else 403,
        "Provenance": (200 if search_ok else 403) if provenance_ok else 403,
    }
    got = {path: await status_of(service, token, path) for path in paths}
    assert got == paths, form
    if search_ok:
        bundle = await search(service, token, "CarePlan", _revinclude="Provenance:target")
        matched = set(ids(bundle))
        assert world.assess in matched and (world.other in matched) is not granular
        assert (world.p2 in matched) is (form != "patient")  # a patient's scopes keep their walls
        audited = {
            t["reference"]
            for e in bundle["entry"]
            if e["search"]["mode"] == "include"
            for t in e["resource"]["target"]
        }
        assert (f"CarePlan/{world.other}" in {a.split("/_history")[0] for a in audited}) is (
            provenance_ok and not granular
        )
