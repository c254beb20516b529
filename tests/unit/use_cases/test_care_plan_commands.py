"""Specifications of the plan's own commands, against the in-memory unit of work: given a store, when a
command runs, then what it commits (versions, events, audit, outcome)."""

from __future__ import annotations

import pytest

from domain.errors import ClosedForChanges, NotFound, VersionConflict
from tests.unit.use_cases.harness import TENANT, Clinic

SNOMED = "http://snomed.info/sct"


async def test_create_commits_the_plan_at_version_1_its_created_event_and_a_create_audit() -> None:
    clinic = Clinic()
    outcome = await clinic.run("careplan.create", {"patient_id": "p1", "title": "Diabetes"})
    assert outcome.reply.ok and outcome.reply.status == 201
    assert outcome.reply.result is not None
    plan_id = outcome.reply.result.id
    assert outcome.versions == [("CarePlan", plan_id, 1)]
    assert outcome.events == [("careplan.created", f"CarePlan/{plan_id}", 1)]
    assert outcome.operation == "CREATE"
    assert outcome.record.provenance is not None
    assert outcome.record.provenance.targets == (f"CarePlan/{plan_id}",)
    assert outcome.record.provenance.patient_id == "p1"
    assert outcome.resource("CarePlan")["subject"] == {"reference": "Patient/p1"}
    assert outcome.record.outcome.reply["result"]["id"] == plan_id
    assert clinic.database.plan(TENANT, plan_id).plan.title == "Diabetes"


async def test_create_with_a_caller_id_that_exists_conflicts_and_commits_nothing() -> None:
    clinic = Clinic()
    await clinic.plan(id="plan-1")
    commits = len(clinic.database.commits)
    with pytest.raises(VersionConflict) as conflict:
        await clinic.run("careplan.create", {"id": "plan-1", "patient_id": "p2", "title": "Other"})
    assert conflict.value.current == 1
    assert len(clinic.database.commits) == commits
    assert clinic.database.plan(TENANT, "plan-1").plan.patient_id == "p1"


async def test_update_makes_version_2_and_names_the_changed_fields() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    outcome = await clinic.run(
        "careplan.update",
        {"care_plan_id": plan_id, "changes": {"title": "Type 2 diabetes", "description": "HbA1c < 7%"}},
        expected_version=1,
    )
    assert outcome.versions == [("CarePlan", plan_id, 2)]
    assert outcome.events == [("careplan.updated", f"CarePlan/{plan_id}", 2)]
    assert outcome.operation == "UPDATE"
    assert outcome.resource("CarePlan")["title"] == "Type 2 diabetes"
    assert outcome.event_data("careplan.updated")["changed"] == ["description", "title"]


async def test_update_at_a_stale_version_conflicts_with_the_current_one() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run(
        "careplan.update", {"care_plan_id": plan_id, "changes": {"title": "B"}}, expected_version=1
    )
    with pytest.raises(VersionConflict) as conflict:
        await clinic.run(
            "careplan.update", {"care_plan_id": plan_id, "changes": {"title": "C"}}, expected_version=1
        )
    assert (conflict.value.expected, conflict.value.current) == (1, 2)
    assert clinic.database.plan(TENANT, plan_id).plan.title == "B"


async def test_a_plan_of_another_tenant_or_none_is_not_found() -> None:
    clinic = Clinic()
    with pytest.raises(NotFound):
        await clinic.run(
            "careplan.update", {"care_plan_id": "nope", "changes": {"title": "B"}}, expected_version=1
        )


async def test_revoking_a_plan_cancels_its_open_activities_in_the_same_commit() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    added = await clinic.run(
        "activity.add", {"care_plan_id": plan_id, "description": "Foot exam", "owner_id": "pr1"}
    )
    assert added.reply.result is not None
    task_id = added.reply.result.id
    outcome = await clinic.run(
        "careplan.change_status", {"care_plan_id": plan_id, "status": "revoked"}, expected_version=2
    )
    assert sorted(outcome.versions) == [("CarePlan", plan_id, 3), ("Task", task_id, 2)]
    assert ("careplan.status_changed", f"CarePlan/{plan_id}", 3) in outcome.events
    assert ("activity.status_changed", f"Task/{task_id}", 2) in outcome.events
    assert outcome.operation == "UPDATE"
    assert clinic.database.plan(TENANT, plan_id).activity(task_id).status.value == "cancelled"


async def test_entered_in_error_is_audited_as_nullify() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    outcome = await clinic.run(
        "careplan.change_status", {"care_plan_id": plan_id, "status": "entered-in-error"}, expected_version=1
    )
    assert outcome.operation == "NULLIFY"
    assert outcome.resource("CarePlan")["status"] == "entered-in-error"


async def test_a_closed_plan_takes_no_update_and_commits_nothing() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run(
        "careplan.change_status", {"care_plan_id": plan_id, "status": "revoked"}, expected_version=1
    )
    commits = len(clinic.database.commits)
    with pytest.raises(ClosedForChanges):
        await clinic.run(
            "careplan.update", {"care_plan_id": plan_id, "changes": {"title": "B"}}, expected_version=2
        )
    assert len(clinic.database.commits) == commits


async def test_request_review_adds_a_review_task_and_sets_the_next_review() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan(review={"interval_days": 90})
    outcome = await clinic.run(
        "careplan.request_review",
        {"care_plan_id": plan_id, "reviewer_id": "pr1", "due": "2026-04-01"},
        expected_version=1,
    )
    (task,) = [v for v in outcome.record.versions if v.resource_type == "Task"]
    assert task.entity.version == 1
    assert task.resource["code"]["coding"][0] == {
        "system": SNOMED,
        "code": "425268008",
        "display": "Review of care plan",
    }
    assert [e[0] for e in outcome.events] == ["activity.added", "careplan.review_requested"]
    assert outcome.operation == "UPDATE"  # it answers with the plan, which is not new
    assert clinic.database.plan(TENANT, plan_id).plan.review is not None


async def test_completing_a_review_with_discontinue_revokes_the_plan_and_completes_the_review_task() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan(review={"interval_days": 90})
    await clinic.run("careplan.request_review", {"care_plan_id": plan_id}, expected_version=1)
    outcome = await clinic.run(
        "careplan.complete_review", {"care_plan_id": plan_id, "outcome": "discontinue"}, expected_version=2
    )
    names = [e[0] for e in outcome.events]
    assert "careplan.reviewed" in names and "careplan.status_changed" in names
    assert "activity.completed" in names
    stored = clinic.database.plan(TENANT, plan_id)
    assert stored.plan.status.value == "revoked"
    assert stored.plan.review is not None and stored.plan.review.last_outcome == "discontinue"
