"""Specifications of `program.rollout` and the worker's migration of a plan (CONTRACT §10), against the
in-memory unit of work: the dry run writes nothing, a run migrates each plan once, diffed as it is when
its turn comes."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from domain.errors import InvalidTransition, InvalidValue, NotFound
from domain.statuses import GoalLifecycleStatus, TaskStatus
from handlers.rollouts import MIGRATE_COMMAND, RolloutRun
from schemas.fhir_validation import validate_resource
from tests.unit.use_cases.harness import TENANT, Clinic
from tests.unit.use_cases.test_program_commands import DIABETES_V1

# v2 drops the foot exam, adds an eye exam and moves the HbA1c test earlier.
DIABETES_V2: dict[str, Any] = DIABETES_V1 | {
    "activities": [
        {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P8W"},
        {"key": "eye-exam", "description": "Retinal screening", "start_after": "P6M", "duration": "P8W"},
    ]
}
URL = f"https://care-plan-service.dev/fhir/programs/{TENANT}/type-2-diabetes"


async def publish(clinic: Clinic, data: dict[str, Any], revises: str | None = None) -> str:
    defined = await clinic.run("program.define", data | ({"revises": revises} if revises else {}))
    assert defined.reply.result is not None
    program_id = defined.reply.result.id
    await clinic.run("program.change_status", {"program_id": program_id, "status": "active"})
    return program_id


async def enrol(clinic: Clinic, patient: str = "p1") -> str:
    outcome = await clinic.run(
        "careplan.enroll", {"patient_id": patient, "program": "type-2-diabetes", "start": "2026-03-02"}
    )
    assert outcome.reply.result is not None
    return outcome.reply.result.id


def task(clinic: Clinic, plan_id: str, key: str) -> Any:
    plan = clinic.database.plan(TENANT, plan_id)
    return next(a for a in plan.activities.values() if a.program_key == key)


async def start_task(clinic: Clinic, plan_id: str, key: str) -> None:
    found = task(clinic, plan_id, key)
    await clinic.run(
        "activity.change_status", {"activity_id": found.id, "status": "accepted"}, expected_version=1
    )
    await clinic.run(
        "activity.change_status", {"activity_id": found.id, "status": "in-progress"}, expected_version=2
    )


async def world() -> tuple[Clinic, str, str, str]:
    """v1 published, two plans enrolled (the second's foot exam under way), v2 published."""
    clinic = Clinic()
    v1 = await publish(clinic, DIABETES_V1)
    untouched, started = await enrol(clinic, "p1"), await enrol(clinic, "p2")
    await start_task(clinic, started, "foot-exam")
    v2 = await publish(clinic, DIABETES_V2, revises=v1)
    return clinic, v2, untouched, started


async def start_run(clinic: Clinic, program_id: str, **data: Any) -> RolloutRun:
    outcome = await clinic.run("program.rollout", {"program_id": program_id, "dry_run": False, **data})
    assert outcome.reply.status == 202 and outcome.reply.result is not None
    assert outcome.reply.result.rollout_id == outcome.reply.result.id
    assert outcome.events == []  # the run's events come from its migrations
    return clinic.rollout_run(outcome.reply.result.rollout_id)


async def test_a_dry_run_reports_per_plan_what_a_run_would_do_and_writes_nothing() -> None:
    clinic, v2, untouched, started = await world()
    commits = len(clinic.database.commits)
    outcome = await clinic.run("program.rollout", {"program_id": v2}, writes=False)
    assert len(clinic.database.commits) == commits
    assert outcome.reply.status == 200 and outcome.reply.result is not None
    report = outcome.reply.result.rollout
    assert report is not None
    assert report["to"] == f"{URL}|2"
    assert report["totals"] == {"plans": 2, "add": 2, "cancel": 1, "update": 2, "keep": 1, "skipped": 0}
    expected: list[dict[str, Any]] = [
        {
            "from": f"{URL}|1",
            "add": ["eye-exam"],
            "cancel": ["foot-exam"],
            "update": ["a1c-lab"],
            "keep": [],
            "care_plan_ids": [untouched],
        },
        {
            "from": f"{URL}|1",
            "add": ["eye-exam"],
            "cancel": [],
            "update": ["a1c-lab"],
            "keep": ["foot-exam"],
            "care_plan_ids": [started],
        },
    ]
    by_plans = lambda group: str(group["care_plan_ids"])  # noqa: E731
    assert sorted(report["changes"], key=by_plans) == sorted(expected, key=by_plans)
    assert (report["unlisted_plans"], report["skipped"]) == (0, [])
    assert not clinic.database.rollout_plans


async def test_a_run_migrates_each_plan_once_by_the_rules_and_leaves_started_and_hand_made_items_alone() -> (
    None
):
    clinic, v2, untouched, started = await world()
    hand_made = await clinic.run(
        "activity.add", {"care_plan_id": untouched, "id": "by-hand", "description": "Diet advice"}
    )
    assert hand_made.reply.status == 201
    run = await start_run(clinic, v2)
    assert clinic.database.rollout_plans[(TENANT, run.rollout_id)] == {
        untouched: "pending",
        started: "pending",
    }

    migrated = {outcome.plan_id: (outcome, record) for outcome, record in await clinic.migrate(run)}

    assert clinic.database.rollout_plans[(TENANT, run.rollout_id)] == {
        untouched: "migrated",
        started: "migrated",
    }
    outcome, record = migrated[untouched]
    assert outcome.changes == {
        "from": f"{URL}|1",
        "to": f"{URL}|2",
        "added": ["eye-exam"],
        "cancelled": ["foot-exam"],
        "updated": ["a1c-lab"],
        "kept": [],
    }
    plan = clinic.database.plan(TENANT, untouched)
    assert plan.plan.instantiates == (f"{URL}|2",)
    assert task(clinic, untouched, "foot-exam").status is TaskStatus.CANCELLED
    lab = task(clinic, untouched, "a1c-lab")
    assert (lab.scheduled.start.isoformat(), lab.version) == ("2026-04-27", 2)  # 2 March + 8 weeks
    eye = task(clinic, untouched, "eye-exam")
    assert (eye.status, eye.scheduled.start.isoformat(), eye.scheduled.end.isoformat()) == (
        TaskStatus.REQUESTED,
        "2026-09-02",
        "2026-10-28",
    )
    assert plan.activities["by-hand"].version == 1 and plan.activities["by-hand"].status is TaskStatus.DRAFT
    goal = next(g for g in plan.goals.values() if g.program_key == "a1c")
    assert (goal.version, goal.lifecycle_status) == (
        1,
        GoalLifecycleStatus.ACTIVE,
    )  # its template is unchanged
    names = [name for name, _, _ in record.events]
    assert sorted(names) == [
        "activity.added",
        "activity.status_changed",
        "activity.updated",
        "careplan.migrated",
    ]
    assert names[-1] == "careplan.migrated"  # the plan's version is the last of the commit's
    assert record.event_data("careplan.migrated") | {"resource": None} == {
        "resource": None,
        **outcome.changes,
        "rollout_id": str(run.rollout_id),
        "program_id": v2,
    }
    assert record.record.outcome.command_type == MIGRATE_COMMAND
    assert record.record.provenance is not None
    assert record.record.provenance.resource["activity"]["text"] == MIGRATE_COMMAND
    for version in record.record.versions:
        validate_resource(version.resource)

    kept, _ = migrated[started]
    assert (kept.changes["cancelled"], kept.changes["kept"]) == ([], ["foot-exam"])
    assert task(clinic, started, "foot-exam").status is TaskStatus.IN_PROGRESS


async def test_a_second_rollout_finds_nothing_to_migrate() -> None:
    clinic, v2, _, _ = await world()
    await clinic.migrate(await start_run(clinic, v2))
    again = await clinic.run("program.rollout", {"program_id": v2}, writes=False)
    assert again.reply.result is not None and again.reply.result.rollout is not None
    assert again.reply.result.rollout["totals"]["plans"] == 0
    run = await start_run(clinic, v2)
    assert clinic.database.rollout_plans[(TENANT, run.rollout_id)] == {}
    assert await clinic.migrate(run) == []


async def test_a_plan_changed_after_the_run_started_is_diffed_as_it_is_when_its_turn_comes() -> None:
    clinic, v2, untouched, _ = await world()
    run = await start_run(clinic, v2)
    await start_task(clinic, untouched, "foot-exam")  # after the run started, before the worker got to it
    migrated = {o.plan_id: o for o, _ in await clinic.migrate(run)}
    assert migrated[untouched].changes["kept"] == ["foot-exam"]
    assert task(clinic, untouched, "foot-exam").status is TaskStatus.IN_PROGRESS


async def test_a_plan_closed_meanwhile_is_passed_over_and_reported() -> None:
    clinic, v2, untouched, started = await world()
    run = await start_run(clinic, v2)
    await clinic.run(
        "careplan.change_status", {"care_plan_id": untouched, "status": "revoked"}, expected_version=1
    )
    migrated = {o.plan_id: o for o, _ in await clinic.migrate(run)}
    assert (migrated[untouched].state, migrated[untouched].changes) == (
        "skipped",
        {"reason": "the plan is revoked"},
    )
    assert clinic.database.plan(TENANT, untouched).plan.instantiates == (f"{URL}|1",)
    assert migrated[started].state == "migrated"


async def test_no_plan_is_migrated_twice() -> None:
    clinic, v2, _, _ = await world()
    run = await start_run(clinic, v2)
    first = await clinic.migrate(run)
    assert len(first) == 2
    assert await clinic.migrate(run) == []  # every plan settled: nothing left to claim


async def test_named_plans_are_checked_and_those_at_the_version_already_are_skipped() -> None:
    clinic, v2, untouched, started = await world()
    with pytest.raises(InvalidValue) as unknown:
        await clinic.run(
            "program.rollout", {"program_id": v2, "care_plan_ids": [untouched, "nope"]}, writes=False
        )
    assert unknown.value.path == "data.care_plan_ids.1"
    hand_made = await clinic.plan()
    with pytest.raises(InvalidValue) as unrelated:
        await clinic.run("program.rollout", {"program_id": v2, "care_plan_ids": [hand_made]}, writes=False)
    assert unrelated.value.path == "data.care_plan_ids.0"
    await clinic.migrate(await start_run(clinic, v2, care_plan_ids=[untouched]))
    outcome = await clinic.run(
        "program.rollout", {"program_id": v2, "care_plan_ids": [untouched, started]}, writes=False
    )
    assert outcome.reply.result is not None and outcome.reply.result.rollout is not None
    report = outcome.reply.result.rollout
    assert report["skipped"] == [{"care_plan_id": untouched, "reason": f"the plan follows {URL}|2 already"}]
    assert [g["care_plan_ids"] for g in report["changes"]] == [[started]]


async def test_only_an_active_version_is_rolled_out() -> None:
    clinic, v2, _, _ = await world()
    draft = await clinic.run("program.define", DIABETES_V2)
    assert draft.reply.result is not None
    with pytest.raises(InvalidTransition):
        await clinic.run("program.rollout", {"program_id": draft.reply.result.id}, writes=False)
    await clinic.run("program.change_status", {"program_id": v2, "status": "retired"})
    with pytest.raises(InvalidTransition):
        await clinic.run("program.rollout", {"program_id": v2, "dry_run": False})
    with pytest.raises(NotFound):
        await clinic.run("program.rollout", {"program_id": "missing"}, writes=False)


async def test_a_changed_goal_template_rewrites_a_not_started_goal_dated_from_the_plans_start() -> None:
    clinic = Clinic()
    v1 = await publish(clinic, DIABETES_V1)
    plan_id = await enrol(clinic)
    later: dict[str, Any] = DIABETES_V1 | {
        "goals": [
            DIABETES_V1["goals"][0]
            | {"targets": [DIABETES_V1["goals"][0]["targets"][0] | {"due_after": "P9M"}]}
        ]
    }
    v2 = await publish(clinic, later, revises=v1)
    ((outcome, record),) = await clinic.migrate(await start_run(clinic, v2))
    assert outcome.changes["updated"] == ["a1c"]
    goal = next(g for g in clinic.database.plan(TENANT, plan_id).goals.values() if g.program_key == "a1c")
    assert (goal.version, goal.targets[0].due_date) == (2, date(2026, 12, 2))  # 2 March + 9 months
    assert record.event_data("goal.updated")["changed"] == ["targets"]


async def test_items_added_to_a_draft_plan_start_as_a_draft_plans_do() -> None:
    clinic = Clinic()
    v1 = await publish(clinic, DIABETES_V1)
    drafted = await clinic.run(
        "careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes", "status": "draft"}
    )
    assert drafted.reply.result is not None
    v2 = await publish(clinic, DIABETES_V2, revises=v1)
    await clinic.migrate(await start_run(clinic, v2))
    assert task(clinic, drafted.reply.result.id, "eye-exam").status is TaskStatus.DRAFT
    assert task(clinic, drafted.reply.result.id, "foot-exam").status is TaskStatus.CANCELLED
