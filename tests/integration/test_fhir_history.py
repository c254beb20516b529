"""vread, instance and type `_history`, and the audit Provenance over HTTP (CONTRACT §6), on real Postgres
and NATS: changes are made with commands, then read back the way fhir-gateway reads them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.goal import Goal
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task
from multidict import CIMultiDictProxy
from nats.aio.client import Client as NatsClient
from yarl import URL

import fhir_read.cursor
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller
from tests.integration.helpers import CARE_PLAN

MODELS: dict[str, Any] = {
    "CarePlan": CarePlan,
    "Goal": Goal,
    "Task": Task,
    "CareTeam": CareTeam,
    "Provenance": Provenance,
}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: CIMultiDictProxy[str]


async def get(url: str | URL, token: str | None, **headers: str) -> Reply:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        raw = await response.read()
        body = orjson.loads(raw) if raw else {}
        if response.status != 304:
            assert response.content_type == "application/fhir+json"
        return Reply(response.status, body, response.headers)


def valid_bundle(body: dict[str, Any], bundle_type: str) -> list[dict[str, Any]]:
    """The Bundle's entries, after checking the Bundle and every resource in it against the R4B models."""
    Bundle.model_validate(body)
    assert body["type"] == bundle_type
    entries: list[dict[str, Any]] = body.get("entry", [])
    for entry in entries:
        resource = entry["resource"]
        if resource["resourceType"] != "OperationOutcome":
            MODELS[resource["resourceType"]].model_validate(resource)
    return entries


def link(body: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in body["link"] if x["relation"] == relation), None)


def versions(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["resource"]["id"], int(e["resource"]["meta"]["versionId"])) for e in entries]


async def follow_next(
    url: str, token: str, bundle_type: str, max_pages: int = 30
) -> list[list[dict[str, Any]]]:
    """Each page's entries, following `next` links; a page that never ends fails instead of looping."""
    pages: list[list[dict[str, Any]]] = []
    next_url: str | None = url
    while next_url is not None:
        assert len(pages) < max_pages, "paging does not end"
        page = await get(next_url, token)
        assert page.status == 200, page.body
        pages.append(valid_bundle(page.body, bundle_type))
        assert pages[-1], "a next link led to an empty page"
        next_url = link(page.body, "next")
    return pages


def is_outcome(reply: Reply, status: int) -> bool:
    return reply.status == status and reply.body["resourceType"] == "OperationOutcome"


@pytest.fixture
def caller(service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory) -> Caller:
    return Caller(nc, service.http_url, token_for(tenant))


@pytest.fixture
def fhir(service: RunningService) -> str:
    return f"{service.http_url}/fhir"


async def plan_with_three_versions(caller: Caller, **data: Any) -> str:
    plan = await caller.ok("careplan.create", CARE_PLAN | {"title": "first title"} | data)
    await caller.ok("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "second title"}}, 1)
    await caller.ok("careplan.change_status", {"care_plan_id": plan["id"], "status": "on-hold"}, 2)
    return str(plan["id"])


# --- vread ---


async def test_vread_of_version_1_after_an_update_returns_the_old_version(caller: Caller, fhir: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN | {"title": "old title"})
    await caller.ok("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "new title"}}, 1)

    first = await get(f"{fhir}/CarePlan/{plan['id']}/_history/1", caller.token)
    second = await get(f"{fhir}/CarePlan/{plan['id']}/_history/2", caller.token)

    assert first.status == 200
    CarePlan.model_validate(first.body)
    assert first.body["title"] == "old title"
    assert first.body["meta"]["versionId"] == "1"
    assert first.headers["ETag"] == 'W/"1"'
    assert first.headers["Last-Modified"].endswith(" GMT")
    assert second.body["title"] == "new title"
    assert second.headers["ETag"] == 'W/"2"'
    not_modified = await get(
        f"{fhir}/CarePlan/{plan['id']}/_history/1", caller.token, **{"If-None-Match": 'W/"1"'}
    )
    assert not_modified.status == 304


@pytest.mark.parametrize("vid", ["3", "0", "abc", "1.0", "99999999999"])
async def test_vread_of_an_unknown_or_malformed_version_is_404(caller: Caller, fhir: str, vid: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    await caller.ok("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "x"}}, 1)
    reply = await get(f"{fhir}/CarePlan/{plan['id']}/_history/{vid}", caller.token)
    assert is_outcome(reply, 404)
    assert reply.body["issue"][0]["code"] == "not-found"


async def test_vread_serves_every_type(caller: Caller, fhir: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    goal = await caller.ok("goal.add", {"care_plan_id": plan["id"], "description": {"text": "g"}})
    task = await caller.ok("activity.add", {"care_plan_id": plan["id"], "description": "t"})
    team = await caller.ok(
        "careteam.add_member", {"care_plan_id": plan["id"], "member_id": "m", "role": {"text": "r"}}
    )
    for resource_type, resource_id in [
        ("Goal", goal["id"]),
        ("Task", task["id"]),
        ("CareTeam", team["id"]),
        ("CarePlan", plan["id"]),
    ]:
        reply = await get(f"{fhir}/{resource_type}/{resource_id}/_history/1", caller.token)
        assert reply.status == 200, reply.body
        MODELS[resource_type].model_validate(reply.body)
        assert reply.body["id"] == resource_id


# --- instance and type history ---


async def test_instance_history_is_newest_first_with_request_methods(caller: Caller, fhir: str) -> None:
    plan_id = await plan_with_three_versions(caller)

    reply = await get(f"{fhir}/CarePlan/{plan_id}/_history", caller.token)

    assert reply.status == 200
    entries = valid_bundle(reply.body, "history")
    assert versions(entries) == [(plan_id, 3), (plan_id, 2), (plan_id, 1)]
    assert [e["request"] for e in entries] == [
        {"method": "PUT", "url": f"CarePlan/{plan_id}"},
        {"method": "PUT", "url": f"CarePlan/{plan_id}"},
        {"method": "POST", "url": "CarePlan"},
    ]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "200 OK", "201 Created"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["response"]["lastModified"] for e in entries] == [
        e["resource"]["meta"]["lastUpdated"] for e in entries
    ]
    assert all(e["fullUrl"] == f"{fhir}/CarePlan/{plan_id}" for e in entries)
    assert [e["resource"]["title"] for e in entries] == ["second title", "second title", "first title"]
    assert link(reply.body, "self") is not None
    assert link(reply.body, "next") is None
    assert "total" not in reply.body


async def test_type_history_spans_every_plan_of_the_tenant(caller: Caller, fhir: str) -> None:
    first = await plan_with_three_versions(caller)
    second = (await caller.ok("careplan.create", CARE_PLAN))["id"]

    reply = await get(f"{fhir}/CarePlan/_history", caller.token)

    entries = valid_bundle(reply.body, "history")
    assert versions(entries) == [(second, 1), (first, 3), (first, 2), (first, 1)]
    stamps = [e["response"]["lastModified"] for e in entries]
    assert stamps == sorted(stamps, reverse=True)


async def test_type_history_of_goals_tasks_and_teams(caller: Caller, fhir: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    goal = await caller.ok("goal.add", {"care_plan_id": plan["id"], "description": {"text": "g"}})
    await caller.ok("goal.update", {"goal_id": goal["id"], "changes": {"notes": ["n"]}}, 1)
    task = await caller.ok("activity.add", {"care_plan_id": plan["id"], "description": "t"})
    team = await caller.ok(
        "careteam.add_member", {"care_plan_id": plan["id"], "member_id": "m", "role": {"text": "r"}}
    )
    expected = {
        "Goal": [(goal["id"], 2), (goal["id"], 1)],
        "Task": [(task["id"], 1)],
        "CareTeam": [(team["id"], 1)],
    }
    for resource_type, expected_versions in expected.items():
        reply = await get(f"{fhir}/{resource_type}/_history", caller.token)
        assert reply.status == 200, reply.body
        entries = valid_bundle(reply.body, "history")
        assert versions(entries) == expected_versions
        assert {e["resource"]["resourceType"] for e in entries} == {resource_type}


async def test_since_keeps_versions_updated_at_or_after_it(caller: Caller, fhir: str) -> None:
    plan_id = await plan_with_three_versions(caller)
    second = await get(f"{fhir}/CarePlan/{plan_id}/_history/2", caller.token)
    since = second.body["meta"]["lastUpdated"]

    recent = await get(URL(f"{fhir}/CarePlan/{plan_id}/_history").with_query(_since=since), caller.token)
    by_date = await get(f"{fhir}/CarePlan/_history?_since=2000-01-01", caller.token)
    future = await get(f"{fhir}/CarePlan/_history?_since=2999-01-01T00:00:00Z", caller.token)
    # An unencoded `+02:00` arrives as a space; it is read back as the offset.
    raw_offset = await get(
        URL(f"{fhir}/CarePlan/_history?_since=2000-01-01T02:00:00+02:00", encoded=True), caller.token
    )

    assert versions(valid_bundle(recent.body, "history")) == [(plan_id, 3), (plan_id, 2)]
    assert len(valid_bundle(by_date.body, "history")) == 3
    assert "entry" not in future.body
    valid_bundle(future.body, "history")
    assert len(valid_bundle(raw_offset.body, "history")) == 3
    assert parse_qs(urlsplit(link(recent.body, "self") or "").query)["_since"] == [since]


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "2026-13-01",
        "2026-01-01T10:00:00+25:00",
        "2026-01-01T10",
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
        "2026-01-01\x00",
    ],
)
async def test_malformed_since_is_400(caller: Caller, fhir: str, since: str) -> None:
    reply = await get(URL(f"{fhir}/CarePlan/_history").with_query(_since=since), caller.token)
    assert is_outcome(reply, 400)


async def test_paging_by_one_returns_every_version_exactly_once(caller: Caller, fhir: str) -> None:
    first = await plan_with_three_versions(caller)
    second = await plan_with_three_versions(caller)
    pages = await follow_next(f"{fhir}/CarePlan/_history?_count=1", caller.token, "history")
    assert {len(entries) for entries in pages} == {1}
    seen = [v for entries in pages for v in versions(entries)]
    assert sorted(seen) == sorted([(plan, v) for plan in (first, second) for v in (1, 2, 3)])
    assert len(seen) == len(set(seen))
    whole = await get(f"{fhir}/CarePlan/_history", caller.token)
    assert seen == versions(whole.body["entry"])  # the same order as one big page


async def test_paging_steps_through_versions_written_at_the_same_instant(caller: Caller, fhir: str) -> None:
    # Revoking a plan cancels its open Tasks in one command: three Task versions share one last_updated.
    plan = await caller.ok("careplan.create", CARE_PLAN)
    for description in ("a", "b", "c"):
        await caller.ok("activity.add", {"care_plan_id": plan["id"], "description": description})
    await caller.ok("careplan.change_status", {"care_plan_id": plan["id"], "status": "revoked"}, 4)
    pages = await follow_next(f"{fhir}/Task/_history?_count=1", caller.token, "history")
    seen = [v for entries in pages for v in versions(entries)]
    cancelled = [e["resource"]["meta"]["lastUpdated"] for entries in pages[:3] for e in entries]
    assert len(set(cancelled)) == 1
    assert len(seen) == 6
    assert sorted(seen) == sorted({(task_id, v) for task_id, _ in seen for v in (1, 2)})


async def test_count_is_validated_and_clamped(caller: Caller, fhir: str) -> None:
    await caller.ok("careplan.create", CARE_PLAN)
    for bad in ("0", "-1", "abc", "1.5", ""):
        assert is_outcome(await get(f"{fhir}/CarePlan/_history?_count={bad}", caller.token), 400), bad
    big = await get(f"{fhir}/CarePlan/_history?_count=5000", caller.token)
    assert big.status == 200
    assert parse_qs(urlsplit(link(big.body, "self") or "").query)["_count"] == ["200"]


async def test_a_tampered_cursor_is_400(caller: Caller, fhir: str) -> None:
    await plan_with_three_versions(caller)
    page = await get(f"{fhir}/CarePlan/_history?_count=1", caller.token)
    next_url = link(page.body, "next")
    assert next_url is not None
    cursor = parse_qs(urlsplit(next_url).query)["_cursor"][0]
    payload, mac = cursor.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]

    for forged in (f"{flipped}.{mac}", f"{payload}.{mac[:-1]}", "garbage", f"{payload}."):
        reply = await get(URL(f"{fhir}/CarePlan/_history").with_query(_count=1, _cursor=forged), caller.token)
        assert is_outcome(reply, 400), forged
    # The genuine one still works, and it belongs to its query: not to another path or another _since.
    assert (await get(next_url, caller.token)).status == 200
    elsewhere = await get(URL(f"{fhir}/Goal/_history").with_query(_cursor=cursor), caller.token)
    other_since = await get(
        URL(f"{fhir}/CarePlan/_history").with_query(_cursor=cursor, _since="2000-01-01"), caller.token
    )
    assert is_outcome(elsewhere, 400)
    assert is_outcome(other_since, 400)


async def test_a_cursor_from_another_tenant_or_user_is_400(
    caller: Caller, fhir: str, tenant: str, token_for: TokenFactory
) -> None:
    await plan_with_three_versions(caller)
    page = await get(f"{fhir}/CarePlan/_history?_count=1", caller.token)
    next_url = link(page.body, "next")
    assert next_url is not None

    other_tenant = await get(next_url, token_for(f"{tenant}b"))
    other_user = await get(next_url, token_for(tenant, subject="someone-else"))

    assert is_outcome(other_tenant, 400)
    assert is_outcome(other_user, 400)


async def test_an_expired_cursor_is_400(caller: Caller, fhir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await plan_with_three_versions(caller)
    # Given a next link sealed two hours ago (the service runs in this process: only the cursor's clock moves)
    with monkeypatch.context() as m:
        m.setattr(fhir_read.cursor, "time", SimpleNamespace(time=lambda: time.time() - 7200))
        page = await get(f"{fhir}/CarePlan/_history?_count=1", caller.token)
    next_url = link(page.body, "next")
    assert next_url is not None
    # When it is followed, then it has expired
    reply = await get(next_url, caller.token)
    assert is_outcome(reply, 400)
    assert "expired" in reply.body["issue"][0]["diagnostics"]


# --- who sees what ---


async def test_patient_sees_only_own_history_and_no_draft_plan_versions(
    caller: Caller, fhir: str, tenant: str, token_for: TokenFactory
) -> None:
    # Given plans of two patients; one of pat-a's started as a draft, another was voided
    drafted = await caller.ok("careplan.create", CARE_PLAN | {"patient_id": "pat-a", "status": "draft"})
    await caller.ok("careplan.change_status", {"care_plan_id": drafted["id"], "status": "active"}, 1)
    voided = await caller.ok("careplan.create", CARE_PLAN | {"patient_id": "pat-a"})
    await caller.ok("careplan.change_status", {"care_plan_id": voided["id"], "status": "entered-in-error"}, 1)
    others = await caller.ok("careplan.create", CARE_PLAN | {"patient_id": "pat-b"})
    own_goal = await caller.ok("goal.add", {"care_plan_id": drafted["id"], "description": {"text": "g"}})
    others_task = await caller.ok("activity.add", {"care_plan_id": others["id"], "description": "t"})
    own_task = await caller.ok("activity.add", {"care_plan_id": drafted["id"], "description": "t"})
    patient = token_for(tenant, roles=["patient"], patient_id="pat-a")

    # When pat-a reads history
    plans = valid_bundle((await get(f"{fhir}/CarePlan/_history", patient)).body, "history")
    goals = valid_bundle((await get(f"{fhir}/Goal/_history", patient)).body, "history")
    tasks = valid_bundle((await get(f"{fhir}/Task/_history", patient)).body, "history")

    # Then only their own, and of the drafted plan only the versions after it became active
    assert {e["resource"]["subject"]["reference"] for e in plans} == {"Patient/pat-a"}
    assert {e["resource"]["status"] for e in plans} == {"active"}
    assert {plan_id for plan_id, _ in versions(plans)} == {drafted["id"]}
    assert (drafted["id"], 1) not in versions(plans)
    assert versions(goals) == [(own_goal["id"], 1)]
    assert versions(tasks) == [(own_task["id"], 1)]
    assert is_outcome(await get(f"{fhir}/CarePlan/{drafted['id']}/_history/1", patient), 404)
    assert (await get(f"{fhir}/CarePlan/{drafted['id']}/_history/2", patient)).status == 200
    assert is_outcome(await get(f"{fhir}/CarePlan/{others['id']}/_history", patient), 404)
    assert is_outcome(await get(f"{fhir}/CarePlan/{others['id']}/_history/1", patient), 404)
    assert is_outcome(await get(f"{fhir}/CarePlan/{voided['id']}/_history/1", patient), 404)
    assert is_outcome(await get(f"{fhir}/Task/{others_task['id']}/_history/1", patient), 404)
    # while a clinician sees all of it
    assert (await get(f"{fhir}/CarePlan/{drafted['id']}/_history/1", caller.token)).status == 200


async def test_another_tenants_ids_are_not_found(
    caller: Caller, fhir: str, tenant: str, token_for: TokenFactory
) -> None:
    plan_id = await plan_with_three_versions(caller)
    intruder = token_for(f"{tenant}b")

    for path in (
        f"CarePlan/{plan_id}/_history/1",
        f"CarePlan/{plan_id}/_history",
        "CarePlan/no-such/_history",
    ):
        reply = await get(f"{fhir}/{path}", intruder)
        assert is_outcome(reply, 404), path
    type_history = await get(f"{fhir}/CarePlan/_history", intruder)
    assert type_history.status == 200
    assert "entry" not in type_history.body


async def test_without_a_token_is_401(fhir: str) -> None:
    for path in (
        "CarePlan/_history",
        "CarePlan/x/_history",
        "CarePlan/x/_history/1",
        "Provenance",
        "Provenance/x",
    ):
        reply = await get(f"{fhir}/{path}", None)
        assert is_outcome(reply, 401), path


async def test_unknown_parameters_are_400_unless_lenient(caller: Caller, fhir: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    for path in (f"CarePlan/{plan['id']}/_history", "CarePlan/_history", "Provenance"):
        strict = await get(f"{fhir}/{path}?_at=2026-01-01&foo=1", caller.token)
        lenient = await get(f"{fhir}/{path}?foo=1", caller.token, Prefer="handling=lenient")
        assert is_outcome(strict, 400), path
        assert lenient.status == 200, path
        assert lenient.body["entry"], path
    search = await get(f"{fhir}/Provenance?foo=1", caller.token, Prefer="return=minimal, handling=lenient")
    outcomes = [e for e in valid_bundle(search.body, "searchset") if e["search"]["mode"] == "outcome"]
    assert "foo" in outcomes[0]["resource"]["issue"][0]["diagnostics"]


# --- Provenance ---


async def provenance_of(caller: Caller, fhir: str, target: str) -> list[dict[str, Any]]:
    reply = await get(URL(f"{fhir}/Provenance").with_query(target=target), caller.token)
    assert reply.status == 200, reply.body
    return [e["resource"] for e in valid_bundle(reply.body, "searchset")]


async def test_provenance_read(caller: Caller, fhir: str, tenant: str, token_for: TokenFactory) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    [created] = await provenance_of(caller, fhir, f"CarePlan/{plan['id']}")

    reply = await get(f"{fhir}/Provenance/{created['id']}", caller.token)

    assert reply.status == 200
    Provenance.model_validate(reply.body)
    assert reply.body == created
    assert reply.body["target"] == [{"reference": f"CarePlan/{plan['id']}/_history/1"}]
    assert reply.headers["ETag"] == 'W/"1"'
    assert is_outcome(await get(f"{fhir}/Provenance/no-such-id", caller.token), 404)
    assert is_outcome(await get(f"{fhir}/Provenance/{created['id']}", token_for(f"{tenant}b")), 404)


async def test_provenance_search_by_target_in_search_order(caller: Caller, fhir: str) -> None:
    plan_id = await plan_with_three_versions(caller)
    goal = await caller.ok("goal.add", {"care_plan_id": plan_id, "description": {"text": "g"}})
    other = (await caller.ok("careplan.create", CARE_PLAN))["id"]

    of_plan = await provenance_of(caller, fhir, f"CarePlan/{plan_id}")
    of_version = await provenance_of(caller, fhir, f"CarePlan/{plan_id}/_history/2")
    of_goal = await provenance_of(caller, fhir, f"Goal/{goal['id']}")
    either = await provenance_of(caller, fhir, f"Goal/{goal['id']},CarePlan/{other}")
    both = await get(f"{fhir}/Provenance?target=CarePlan/{plan_id}&target=Goal/{goal['id']}", caller.token)

    # create, update, status change, and goal.add (which makes plan version 4)
    assert [p["target"][-1]["reference"] for p in of_plan] == [
        f"CarePlan/{plan_id}/_history/{v}" for v in (1, 2, 3, 4)
    ]
    assert [p["recorded"] for p in of_plan] == sorted(p["recorded"] for p in of_plan)
    assert of_version == of_plan  # a versioned target means the resource
    assert len(of_goal) == 1
    assert {p["id"] for p in either} == {
        of_goal[0]["id"],
        (await provenance_of(caller, fhir, f"CarePlan/{other}"))[0]["id"],
    }
    assert [e["resource"]["id"] for e in valid_bundle(both.body, "searchset")] == [of_goal[0]["id"]]
    assert all(e["search"] == {"mode": "match"} for e in valid_bundle(both.body, "searchset"))


@pytest.mark.parametrize(
    "query",
    [
        "target=abc",
        "target=CarePlan/",
        "patient=Group/1",
        "recorded=ne2026-01-01",
        "recorded=2026-1-1",
        "recorded=lt0001-01-01T00:00:00%2B14:00",
        "target=CarePlan/%00",
        "target=a,,b",
    ],
)
async def test_malformed_provenance_search_is_400(caller: Caller, fhir: str, query: str) -> None:
    assert is_outcome(await get(f"{fhir}/Provenance?{query}", caller.token), 400)


async def test_provenance_search_by_patient(
    caller: Caller, fhir: str, tenant: str, token_for: TokenFactory
) -> None:
    mine = (await caller.ok("careplan.create", CARE_PLAN | {"patient_id": "pat-a"}))["id"]
    theirs = (await caller.ok("careplan.create", CARE_PLAN | {"patient_id": "pat-b"}))["id"]

    def targets(reply: Reply) -> set[str]:
        return {p["resource"]["target"][0]["reference"] for p in valid_bundle(reply.body, "searchset")}

    by_reference = await get(f"{fhir}/Provenance?patient=Patient/pat-a", caller.token)
    by_id = await get(f"{fhir}/Provenance?patient=pat-a", caller.token)
    either = await get(f"{fhir}/Provenance?patient=pat-a,Patient/pat-b", caller.token)
    contradictory = await get(f"{fhir}/Provenance?patient=pat-a&patient=pat-b", caller.token)
    patient = token_for(tenant, roles=["patient"], patient_id="pat-a")
    as_patient = await get(f"{fhir}/Provenance", patient)
    as_patient_asking_for_others = await get(f"{fhir}/Provenance?patient=pat-b", patient)

    assert targets(by_reference) == targets(by_id) == {f"CarePlan/{mine}/_history/1"}
    assert targets(either) == {f"CarePlan/{mine}/_history/1", f"CarePlan/{theirs}/_history/1"}
    assert targets(contradictory) == set()
    assert targets(as_patient) == {f"CarePlan/{mine}/_history/1"}
    assert targets(as_patient_asking_for_others) == set()
    [own] = valid_bundle(as_patient.body, "searchset")
    assert (await get(f"{fhir}/Provenance/{own['resource']['id']}", patient)).status == 200
    [foreign] = valid_bundle((await get(f"{fhir}/Provenance?patient=pat-b", caller.token)).body, "searchset")
    assert is_outcome(await get(f"{fhir}/Provenance/{foreign['resource']['id']}", patient), 404)


async def test_provenance_search_by_recorded(caller: Caller, fhir: str) -> None:
    plan_id = await plan_with_three_versions(caller)
    first, second, third = await provenance_of(caller, fhir, f"CarePlan/{plan_id}")
    day = second["recorded"][:10]

    async def recorded(*values: str) -> list[str]:
        query = urlencode([("target", f"CarePlan/{plan_id}"), *(("recorded", v) for v in values)])
        reply = await get(f"{fhir}/Provenance?{query}", caller.token)
        assert reply.status == 200, reply.body
        return [e["resource"]["id"] for e in valid_bundle(reply.body, "searchset")]

    assert await recorded(f"ge{second['recorded']}") == [second["id"], third["id"]]
    assert await recorded(f"gt{second['recorded']}") == [third["id"]]
    assert await recorded(f"lt{second['recorded']}") == [first["id"]]
    assert await recorded(f"le{second['recorded']}") == [first["id"], second["id"]]
    assert await recorded(second["recorded"]) == [second["id"]]
    assert await recorded(f"ge{second['recorded']}", f"le{second['recorded']}") == [second["id"]]
    assert await recorded(f"lt{second['recorded']},gt{second['recorded']}") == [first["id"], third["id"]]
    assert await recorded(day) == [first["id"], second["id"], third["id"]]
    assert await recorded(f"gt{day}") == []
    assert await recorded(f"lt{day}") == []
    assert await recorded(f"ge{day[:7]}", f"le{day[:4]}") == [first["id"], second["id"], third["id"]]


async def test_provenance_search_pages_with_a_signed_cursor(
    caller: Caller, fhir: str, tenant: str, token_for: TokenFactory
) -> None:
    plan_id = await plan_with_three_versions(caller)
    await caller.ok("goal.add", {"care_plan_id": plan_id, "description": {"text": "g"}})
    url: str | None = f"{fhir}/Provenance?target=CarePlan/{plan_id}&_count=1"
    seen: list[str] = []
    while url is not None and len(seen) < 30:
        page = await get(url, caller.token)
        assert page.status == 200, page.body
        [entry] = valid_bundle(page.body, "searchset")
        seen.append(entry["resource"]["id"])
        url = link(page.body, "next")
        if url is not None:
            assert parse_qs(urlsplit(url).query)["target"] == [f"CarePlan/{plan_id}"]
            assert is_outcome(await get(url, token_for(f"{tenant}b")), 400)
            cursor = parse_qs(urlsplit(url).query)["_cursor"][0]
            assert is_outcome(
                await get(URL(f"{fhir}/Provenance").with_query(_cursor=cursor), caller.token), 400
            )
    assert seen == [p["id"] for p in await provenance_of(caller, fhir, f"CarePlan/{plan_id}")]
    assert len(seen) == 4
