"""Every command of CONTRACT §4 on real JetStream and Postgres: replies, versions, FHIR and events.
Each test runs twice: over NATS (§2) and over the REST write API (§9), which must answer alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.goal import Goal
from fhir.resources.R4B.task import Task
from nats.aio.client import Client as NatsClient

from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller, RestCaller
from tests.integration.helpers import CARE_PLAN, event_caused_by, last_event

SNOMED = "http://snomed.info/sct"
HBA1C = {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]}


CallerFactory = Callable[[str], Caller]


@pytest.fixture(params=[Caller, RestCaller], ids=["nats", "http"])
def make_caller(
    request: pytest.FixtureRequest, service: RunningService, nc: NatsClient, token_for: TokenFactory
) -> CallerFactory:
    kind: type[Caller] = request.param
    return lambda tenant: kind(nc, service.http_url, token_for(tenant))


@pytest.fixture
def caller(make_caller: CallerFactory, tenant: str) -> Caller:
    return make_caller(tenant)


async def test_plan_goal_activity_team_and_review_end_to_end(
    caller: Caller, nc: NatsClient, tenant: str
) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN | {"review": {"interval_days": 90}})
    plan_id = plan["id"]

    # goal.add: a new Goal (v1) and a new plan version listing it
    goal = await caller.ok(
        "goal.add",
        {
            "care_plan_id": plan_id,
            "description": {"text": "HbA1c below 7%"},
            "lifecycle_status": "active",
            "achievement_status": "in-progress",
            "priority": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/goal-priority", "code": "high-priority"}
                ]
            },
            "targets": [
                {
                    "measure": HBA1C,
                    "detail": {"quantity": {"value": 7, "unit": "%"}},
                    "due_date": "2027-03-01",
                }
            ],
        },
        version=1,
    )
    assert goal["version"] == 1
    fhir_goal = await caller.read("Goal", goal["id"])
    Goal.model_validate(fhir_goal)
    assert fhir_goal["subject"] == {"reference": "Patient/p1"}
    assert fhir_goal["target"][0]["detailQuantity"] == {"value": 7.0, "unit": "%"}
    fhir_plan = await caller.read("CarePlan", plan_id)
    assert fhir_plan["meta"]["versionId"] == "2"
    assert fhir_plan["goal"] == [{"reference": f"Goal/{goal['id']}"}]

    # activity.add: a Task based on the plan, pertaining to the goal, ready because it has an owner
    task = await caller.ok(
        "activity.add",
        {
            "care_plan_id": plan_id,
            "description": "Diabetes education session",
            "code": {"coding": [{"system": SNOMED, "code": "385805005"}]},
            "goal_ids": [goal["id"]],
            "owner_id": "nurse-1",
            "priority": "routine",
            "scheduled": {"end": "2026-12-15"},
        },
    )
    fhir_task = await caller.read("Task", task["id"])
    Task.model_validate(fhir_task)
    assert fhir_task["status"] == "ready"
    assert fhir_task["basedOn"] == [{"reference": f"CarePlan/{plan_id}"}]
    assert fhir_task["for"] == {"reference": "Patient/p1"}
    assert fhir_task["restriction"] == {"period": {"end": "2026-12-15"}}
    assert fhir_task["extension"][0]["valueReference"] == {"reference": f"Goal/{goal['id']}"}
    assert (await caller.read("CarePlan", plan_id))["activity"] == [
        {"reference": {"reference": f"Task/{task['id']}"}}
    ]

    # activity.assign and status changes through to completion
    assigned = await caller.ok(
        "activity.assign", {"activity_id": task["id"], "owner_id": "nurse-2"}, version=1
    )
    assert assigned["version"] == 2
    started = await caller.ok(
        "activity.change_status", {"activity_id": task["id"], "status": "in-progress"}, 2
    )
    done = await caller.ok(
        "activity.change_status",
        {"activity_id": task["id"], "status": "completed", "outcome": {"text": "attended"}},
        started["version"],
    )
    fhir_task = await caller.read("Task", task["id"])
    assert fhir_task["status"] == "completed"
    assert fhir_task["owner"] == {"reference": "Practitioner/nurse-2"}
    assert "start" in fhir_task["executionPeriod"]
    assert "end" in fhir_task["executionPeriod"]
    assert done["version"] == 4
    completed = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.activity.completed")
    assert completed["subject"] == f"Task/{task['id']}"
    assert completed["data"]["from"] == "in-progress"
    assert completed["data"]["to"] == "completed"

    # goal: update then achieved
    await caller.ok("goal.update", {"goal_id": goal["id"], "changes": {"notes": ["on track"]}}, version=1)
    achieved = await caller.ok(
        "goal.change_status",
        {"goal_id": goal["id"], "lifecycle_status": "completed", "achievement_status": "achieved"},
        version=2,
    )
    assert achieved["version"] == 3
    event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.goal.achieved")
    assert event["data"]["to"] == {"lifecycle_status": "completed", "achievement_status": "achieved"}
    assert event["resourceversion"] == 3

    # care team: the first member creates the team; update, then remove (membership ends, stays listed)
    team = await caller.ok(
        "careteam.add_member",
        {
            "care_plan_id": plan_id,
            "member_id": "dr-1",
            "role": {"coding": [{"system": SNOMED, "code": "158965000"}]},
        },
    )
    assert team["resource_type"] == "CareTeam"
    assert team["version"] == 1
    team = await caller.ok(
        "careteam.update_member",
        {"care_plan_id": plan_id, "member_id": "dr-1", "changes": {"role": {"text": "Lead physician"}}},
        version=1,
    )
    team = await caller.ok(
        "careteam.remove_member", {"care_plan_id": plan_id, "member_id": "dr-1"}, version=2
    )
    fhir_team = await caller.read("CareTeam", team["id"])
    CareTeam.model_validate(fhir_team)
    assert fhir_team["participant"][0]["role"] == [{"text": "Lead physician"}]
    assert "end" in fhir_team["participant"][0]["period"]
    assert (await caller.read("CarePlan", plan_id))["careTeam"] == [{"reference": f"CareTeam/{team['id']}"}]

    # review cycle: request (a review Task focused on the plan), then complete with the interval's next date
    version = (await caller.read("CarePlan", plan_id))["meta"]["versionId"]
    requested = await caller.ok(
        "careplan.request_review",
        {"care_plan_id": plan_id, "reviewer_id": "dr-2", "due": "2026-12-01"},
        int(version),
    )
    review_event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.review_requested")
    review_task = await caller.read("Task", review_event["data"]["review_task_id"])
    assert review_task["code"]["coding"][0]["code"] == "425268008"
    assert review_task["focus"] == {"reference": f"CarePlan/{plan_id}"}
    assert review_task["restriction"]["period"]["end"] == "2026-12-01"
    reviewed = await caller.ok(
        "careplan.complete_review",
        {"care_plan_id": plan_id, "outcome": "continue", "notes": ["stable"]},
        requested["version"],
    )
    fhir_plan = await caller.read("CarePlan", plan_id)
    CarePlan.model_validate(fhir_plan)
    review = {e["url"]: e for e in fhir_plan["extension"][0]["extension"]}
    assert review["lastOutcome"]["valueCode"] == "continue"
    assert "nextReviewDue" in review
    assert (await caller.read("Task", review_task["id"]))["status"] == "completed"
    assert reviewed["version"] == requested["version"] + 1

    # completing the plan closes what is open; the plan then takes no new goals
    closed = await caller.ok(
        "careplan.change_status", {"care_plan_id": plan_id, "status": "completed"}, reviewed["version"]
    )
    status_event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.status_changed")
    assert (status_event["data"]["from"], status_event["data"]["to"]) == ("active", "completed")
    refused = await caller.send("goal.add", {"care_plan_id": plan_id, "description": {"text": "late"}})
    assert refused["error"]["code"] == "INVALID_TRANSITION"
    assert refused["status"] == 409
    assert closed["version"] == reviewed["version"] + 1


async def test_status_change_not_allowed_names_from_to_and_allowed(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN | {"status": "draft"})
    reply = await caller.send(
        "careplan.change_status", {"care_plan_id": plan["id"], "status": "completed"}, 1
    )
    assert reply["status"] == 409
    assert reply["error"]["code"] == "INVALID_TRANSITION"
    assert reply["error"]["details"] == {
        "field": "status",
        "from": "draft",
        "to": "completed",
        "allowed": ["active", "revoked", "entered-in-error"],
    }


async def test_revoking_a_plan_cancels_open_activities(caller: Caller, nc: NatsClient, tenant: str) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    first = await caller.ok(
        "activity.add", {"care_plan_id": plan["id"], "description": "walk", "owner_id": "n1"}
    )
    second = await caller.ok("activity.add", {"care_plan_id": plan["id"], "description": "diet"})
    await caller.ok("activity.change_status", {"activity_id": first["id"], "status": "in-progress"}, 1)
    await caller.ok(
        "careplan.change_status", {"care_plan_id": plan["id"], "status": "revoked", "reason": "moved"}, 3
    )
    for task_id in (first["id"], second["id"]):
        task = await caller.read("Task", task_id)
        assert task["status"] == "cancelled"
        assert task["statusReason"] == {"text": "care plan revoked"}


async def test_holding_a_plan_holds_and_resuming_resumes_in_progress_activities(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    task = await caller.ok(
        "activity.add", {"care_plan_id": plan["id"], "description": "walk", "owner_id": "n1"}
    )
    await caller.ok("activity.change_status", {"activity_id": task["id"], "status": "in-progress"}, 1)
    held = await caller.ok("careplan.change_status", {"care_plan_id": plan["id"], "status": "on-hold"}, 2)
    assert (await caller.read("Task", task["id"]))["status"] == "on-hold"
    await caller.ok(
        "careplan.change_status", {"care_plan_id": plan["id"], "status": "active"}, held["version"]
    )
    assert (await caller.read("Task", task["id"]))["status"] == "in-progress"


async def test_versioned_command_without_expected_version_is_refused(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    reply = await caller.send("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "x"}})
    if caller.transport == "nats":
        assert reply["error"]["code"] == "VALIDATION_ERROR"
        assert reply["error"]["details"]["errors"][0]["path"] == "expected_version"
    else:  # HTTP's own status for a missing If-Match (CONTRACT §9)
        assert (reply["status"], reply["error"]["code"]) == (428, "PRECONDITION_REQUIRED")
    assert (await caller.read("CarePlan", plan["id"]))["title"] == CARE_PLAN["title"]


async def test_intent_and_patient_cannot_change(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    for changes in ({"intent": "order"}, {"patient_id": "someone-else"}):
        reply = await caller.send("careplan.update", {"care_plan_id": plan["id"], "changes": changes}, 1)
        assert reply["error"]["code"] == "VALIDATION_ERROR", changes


async def test_update_with_null_clears_a_field_and_nothing_new_makes_no_version(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN | {"description": "to be removed"})
    updated = await caller.ok(
        "careplan.update", {"care_plan_id": plan["id"], "changes": {"description": None}}, 1
    )
    assert updated["version"] == 2
    assert "description" not in await caller.read("CarePlan", plan["id"])
    same = await caller.ok(
        "careplan.update", {"care_plan_id": plan["id"], "changes": {"title": CARE_PLAN["title"]}}, 2
    )
    assert same["version"] == 2


async def test_activity_goals_must_belong_to_the_plan(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    other = await caller.ok("careplan.create", CARE_PLAN)
    foreign_goal = await caller.ok("goal.add", {"care_plan_id": other["id"], "description": {"text": "g"}})
    reply = await caller.send(
        "activity.add", {"care_plan_id": plan["id"], "description": "x", "goal_ids": [foreign_goal["id"]]}
    )
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert reply["error"]["details"]["errors"][0]["path"] == "goal_ids"


async def test_eight_concurrent_updates_with_one_version_one_wins(caller: Caller) -> None:
    plan = await caller.ok("careplan.create", CARE_PLAN)
    replies = await asyncio.gather(
        *(
            caller.send(
                "careplan.update", {"care_plan_id": plan["id"], "changes": {"title": f"title {i}"}}, 1
            )
            for i in range(8)
        )
    )
    winners = [r for r in replies if r["ok"]]
    losers = [r for r in replies if not r["ok"]]
    assert len(winners) == 1
    assert len(losers) == 7
    assert {r["error"]["code"] for r in losers} == {"VERSION_CONFLICT"}
    assert {r["error"]["details"]["current_version"] for r in losers} == {2}
    assert (await caller.read("CarePlan", plan["id"]))["meta"]["versionId"] == "2"


EVERY_COMMAND: list[tuple[str, dict[str, Any]]] = [
    ("careplan.update", {"care_plan_id": "{plan}", "changes": {"title": "x"}}),
    ("careplan.change_status", {"care_plan_id": "{plan}", "status": "on-hold"}),
    ("careplan.request_review", {"care_plan_id": "{plan}"}),
    ("careplan.complete_review", {"care_plan_id": "{plan}", "outcome": "continue"}),
    ("goal.add", {"care_plan_id": "{plan}", "description": {"text": "x"}}),
    ("goal.update", {"goal_id": "{goal}", "changes": {"notes": ["x"]}}),
    ("goal.change_status", {"goal_id": "{goal}", "lifecycle_status": "active"}),
    ("activity.add", {"care_plan_id": "{plan}", "description": "x"}),
    ("activity.assign", {"activity_id": "{task}", "owner_id": "n"}),
    ("activity.change_status", {"activity_id": "{task}", "status": "ready"}),
    ("careteam.add_member", {"care_plan_id": "{plan}", "member_id": "m2", "role": {"text": "r"}}),
    (
        "careteam.update_member",
        {"care_plan_id": "{plan}", "member_id": "m", "changes": {"role": {"text": "x"}}},
    ),
    ("careteam.remove_member", {"care_plan_id": "{plan}", "member_id": "m"}),
]


async def seed_plan(caller: Caller) -> dict[str, str]:
    """A plan with a goal, an activity and a one-member team: something for every command to act on."""
    plan = await caller.ok("careplan.create", CARE_PLAN)
    goal = await caller.ok("goal.add", {"care_plan_id": plan["id"], "description": {"text": "g"}})
    task = await caller.ok("activity.add", {"care_plan_id": plan["id"], "description": "t"})
    await caller.ok(
        "careteam.add_member", {"care_plan_id": plan["id"], "member_id": "m", "role": {"text": "r"}}
    )
    return {"{plan}": plan["id"], "{goal}": goal["id"], "{task}": task["id"]}


def fill(template: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    return {k: ids.get(v, v) if isinstance(v, str) else v for k, v in template.items()}


@pytest.mark.parametrize(("command", "template"), EVERY_COMMAND, ids=[c for c, _ in EVERY_COMMAND])
async def test_another_tenants_ids_are_not_found(
    make_caller: CallerFactory, tenant: str, command: str, template: dict[str, Any]
) -> None:
    # Given a plan with a goal, a task and a team in tenant A
    ids = await seed_plan(make_caller(tenant))
    # When tenant B sends the command with A's ids
    intruder = make_caller(f"{tenant}b")
    reply = await intruder.send(command, fill(template, ids), version=1)
    # Then it is NOT_FOUND, exactly like an id that exists nowhere
    assert reply["status"] == 404, reply
    assert reply["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(("command", "template"), EVERY_COMMAND, ids=[c for c, _ in EVERY_COMMAND])
async def test_stale_expected_version_is_a_conflict_with_the_current_version(
    caller: Caller, command: str, template: dict[str, Any]
) -> None:
    ids = await seed_plan(caller)
    reply = await caller.send(command, fill(template, ids), version=99)
    assert reply["status"] == 409, reply
    assert reply["error"]["code"] == "VERSION_CONFLICT"
    assert reply["error"]["details"]["current_version"] >= 1


EVENTS: list[tuple[str, dict[str, Any], str, str]] = [
    # command, data, event on careplan.evt.<tenant>.<event>, resource type of the event's subject
    (
        "careplan.update",
        {"care_plan_id": "{plan}", "changes": {"title": "x"}},
        "careplan.updated",
        "CarePlan",
    ),
    (
        "careplan.change_status",
        {"care_plan_id": "{plan}", "status": "on-hold"},
        "careplan.status_changed",
        "CarePlan",
    ),
    ("careplan.request_review", {"care_plan_id": "{plan}"}, "careplan.review_requested", "CarePlan"),
    (
        "careplan.complete_review",
        {"care_plan_id": "{plan}", "outcome": "revise"},
        "careplan.reviewed",
        "CarePlan",
    ),
    ("goal.add", {"care_plan_id": "{plan}", "description": {"text": "x"}}, "goal.added", "Goal"),
    ("goal.update", {"goal_id": "{goal}", "changes": {"notes": ["x"]}}, "goal.updated", "Goal"),
    (
        "goal.change_status",
        {"goal_id": "{goal}", "lifecycle_status": "active"},
        "goal.status_changed",
        "Goal",
    ),
    ("activity.add", {"care_plan_id": "{plan}", "description": "x"}, "activity.added", "Task"),
    ("activity.assign", {"activity_id": "{task}", "owner_id": "n"}, "activity.assigned", "Task"),
    (
        "activity.change_status",
        {"activity_id": "{task}", "status": "ready"},
        "activity.status_changed",
        "Task",
    ),
    (
        "careteam.add_member",
        {"care_plan_id": "{plan}", "member_id": "m2", "role": {"text": "r"}},
        "careteam.member_added",
        "CareTeam",
    ),
    (
        "careteam.update_member",
        {"care_plan_id": "{plan}", "member_id": "m", "changes": {"role": {"text": "x"}}},
        "careteam.member_updated",
        "CareTeam",
    ),
    (
        "careteam.remove_member",
        {"care_plan_id": "{plan}", "member_id": "m"},
        "careteam.member_removed",
        "CareTeam",
    ),
]


@pytest.mark.parametrize(
    ("command", "template", "event_name", "resource_type"), EVENTS, ids=[e[0] for e in EVENTS]
)
async def test_each_command_publishes_its_event_and_audit(
    caller: Caller,
    nc: NatsClient,
    tenant: str,
    command: str,
    template: dict[str, Any],
    event_name: str,
    resource_type: str,
) -> None:
    ids = await seed_plan(caller)
    current = {"CarePlan": 4, "Goal": 1, "Task": 1, "CareTeam": 1}  # after seed_plan
    data = fill(template, ids)
    target_type = {"careplan": "CarePlan", "goal": "Goal", "activity": "Task", "careteam": "CareTeam"}[
        command.split(".")[0]
    ]
    version = None if command in ("goal.add", "activity.add", "careteam.add_member") else current[target_type]
    if command == "careplan.complete_review":
        requested = await caller.ok("careplan.request_review", {"care_plan_id": ids["{plan}"]}, version)
        version = requested["version"]

    reply = await caller.send(command, data, version)

    assert reply["ok"] is True, reply
    event = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.{event_name}", reply["command_id"]
    )
    assert event["type"] == f"careplan.{event_name}"
    assert event["subject"].startswith(f"{resource_type}/")
    assert event["data"]["resource"]["resourceType"] == resource_type
    assert event["resourceversion"] == int(event["data"]["resource"]["meta"]["versionId"])
    audit = await event_caused_by(nc, "CAREPLAN_AUDIT", f"careplan.audit.{tenant}", reply["command_id"])
    assert f"{event['subject']}/_history/{event['resourceversion']}" in {
        t["reference"] for t in audit["data"]["target"]
    }
