"""Specifications of the goal and activity commands against the in-memory unit of work."""

from __future__ import annotations

import pytest

from domain.errors import InvalidTransition, NotFound, VersionConflict
from tests.unit.use_cases.harness import TENANT, Clinic

HBA1C = {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "HbA1c"}]}


async def test_adding_a_goal_makes_it_and_a_new_plan_version_audited_as_a_create() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    outcome = await clinic.run(
        "goal.add", {"care_plan_id": plan_id, "id": "g1", "description": {"text": "HbA1c below 7%"}}
    )
    assert outcome.reply.status == 201
    assert sorted(outcome.versions) == [("CarePlan", plan_id, 2), ("Goal", "g1", 1)]
    assert [e[0] for e in outcome.events] == ["goal.added", "careplan.updated"]
    assert outcome.operation == "CREATE"
    assert outcome.resource("CarePlan")["goal"] == [{"reference": "Goal/g1"}]
    assert clinic.database.plan(TENANT, plan_id).goal("g1").patient_id == "p1"


async def test_a_goal_id_taken_in_another_plan_of_the_tenant_conflicts() -> None:
    clinic = Clinic()
    first, second = await clinic.plan(), await clinic.plan()
    await clinic.run("goal.add", {"care_plan_id": first, "id": "g1", "description": {"text": "A"}})
    with pytest.raises(VersionConflict) as conflict:
        await clinic.run("goal.add", {"care_plan_id": second, "id": "g1", "description": {"text": "B"}})
    assert conflict.value.current == 1
    assert clinic.database.plan(TENANT, second).goals == {}


async def test_updating_a_goal_changes_only_the_goal() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("goal.add", {"care_plan_id": plan_id, "id": "g1", "description": {"text": "A"}})
    outcome = await clinic.run(
        "goal.update",
        {"goal_id": "g1", "changes": {"targets": [{"measure": HBA1C, "due_date": "2026-09-01"}]}},
        expected_version=1,
    )
    assert outcome.versions == [("Goal", "g1", 2)]
    assert outcome.event_data("goal.updated")["changed"] == ["targets"]
    assert outcome.resource("Goal")["target"][0]["dueDate"] == "2026-09-01"


async def test_a_goal_reaching_achieved_emits_achieved_beside_its_status_change() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run(
        "goal.add",
        {"care_plan_id": plan_id, "id": "g1", "description": {"text": "A"}, "lifecycle_status": "active"},
    )
    outcome = await clinic.run(
        "goal.change_status",
        {"goal_id": "g1", "lifecycle_status": "completed", "achievement_status": "achieved"},
        expected_version=1,
    )
    assert [e[0] for e in outcome.events] == ["goal.status_changed", "goal.achieved"]
    assert outcome.resource("Goal")["achievementStatus"]["coding"][0]["code"] == "achieved"


async def test_an_unknown_goal_is_not_found() -> None:
    with pytest.raises(NotFound):
        await Clinic().run("goal.update", {"goal_id": "nope", "changes": {}}, expected_version=1)


async def test_an_activity_with_an_owner_starts_ready_and_its_plan_lists_it() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    outcome = await clinic.run(
        "activity.add", {"care_plan_id": plan_id, "id": "a1", "description": "Foot exam", "owner_id": "pr1"}
    )
    assert outcome.reply.status == 201
    assert outcome.resource("Task")["status"] == "ready"
    assert outcome.resource("Task")["owner"] == {"reference": "Practitioner/pr1"}
    assert [e[0] for e in outcome.events] == ["activity.added", "careplan.updated"]
    assert outcome.operation == "CREATE"


async def test_assigning_an_activity_says_from_whom_to_whom() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("activity.add", {"care_plan_id": plan_id, "id": "a1", "description": "Foot exam"})
    outcome = await clinic.run(
        "activity.assign", {"activity_id": "a1", "owner_id": "pr2"}, expected_version=1
    )
    assert outcome.versions == [("Task", "a1", 2)]
    assert outcome.event_data("activity.assigned") | {"resource": None} == {
        "from": None,
        "to": "pr2",
        "resource": None,
    }


async def test_completing_an_activity_emits_completed_and_a_disallowed_move_commits_nothing() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run(
        "activity.add", {"care_plan_id": plan_id, "id": "a1", "description": "Foot exam", "owner_id": "pr1"}
    )
    await clinic.run(
        "activity.change_status", {"activity_id": "a1", "status": "in-progress"}, expected_version=1
    )
    outcome = await clinic.run(
        "activity.change_status", {"activity_id": "a1", "status": "completed"}, expected_version=2
    )
    assert [e[0] for e in outcome.events] == ["activity.status_changed", "activity.completed"]
    commits = len(clinic.database.commits)
    with pytest.raises(InvalidTransition):
        await clinic.run(
            "activity.change_status", {"activity_id": "a1", "status": "ready"}, expected_version=3
        )
    assert len(clinic.database.commits) == commits
    assert clinic.database.plan(TENANT, plan_id).activity("a1").status.value == "completed"


async def test_an_activity_marked_entered_in_error_is_audited_as_nullify() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("activity.add", {"care_plan_id": plan_id, "id": "a1", "description": "Foot exam"})
    outcome = await clinic.run(
        "activity.change_status", {"activity_id": "a1", "status": "entered-in-error"}, expected_version=1
    )
    assert outcome.operation == "NULLIFY"
