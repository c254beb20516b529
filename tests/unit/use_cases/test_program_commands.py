"""Specifications of the care-program commands (CONTRACT §10) against the in-memory unit of work."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import ClosedForChanges, InvalidTransition, InvalidValue, NotFound
from schemas.fhir_validation import validate_resource
from tests.unit.use_cases.harness import TENANT, Clinic

A1C = {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]}
DIABETES_V1: dict[str, Any] = {
    "name": "type-2-diabetes",
    "title": "Type 2 diabetes",
    "review": {"interval_days": 90},
    "goals": [
        {
            "key": "a1c",
            "description": {"text": "HbA1c below 7 %"},
            "targets": [
                {"measure": A1C, "detail": {"quantity": {"value": 7, "unit": "%"}}, "due_after": "P6M"}
            ],
        }
    ],
    "activities": [
        {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P12W"},
        {"key": "foot-exam", "description": "Foot examination", "start_after": "P3M", "duration": "P4W"},
    ],
}


async def define(clinic: Clinic, data: dict[str, Any] = DIABETES_V1) -> str:
    outcome = await clinic.run("program.define", data)
    assert outcome.reply.result is not None
    return outcome.reply.result.id


async def test_define_makes_a_draft_plan_definition_at_version_1() -> None:
    clinic = Clinic()
    outcome = await clinic.run("program.define", DIABETES_V1)
    assert outcome.reply.status == 201
    resource = outcome.resource("PlanDefinition")
    validate_resource(resource)
    assert (resource["status"], resource["version"], resource["name"]) == ("draft", "1", "type-2-diabetes")
    assert resource["url"] == f"https://care-plan-service.dev/fhir/programs/{TENANT}/type-2-diabetes"
    assert [g["id"] for g in resource["goal"]] == ["a1c"]
    assert [a["id"] for a in resource["action"]] == ["a1c-lab", "foot-exam"]
    assert [e[0] for e in outcome.events] == ["program.defined"]
    assert outcome.record.outbox[0].subject == f"careplan.evt.{TENANT}.program.defined"
    assert outcome.operation == "CREATE"
    assert outcome.record.provenance is not None and outcome.record.provenance.patient_id is None


async def test_each_define_of_a_name_is_its_next_version_and_other_names_start_at_1() -> None:
    clinic = Clinic()
    first = await define(clinic)
    second = await clinic.run("program.define", DIABETES_V1 | {"revises": first})
    other = await clinic.run("program.define", DIABETES_V1 | {"name": "copd"})
    assert second.resource("PlanDefinition")["version"] == "2"
    assert other.resource("PlanDefinition")["version"] == "1"
    assert (
        second.resource("PlanDefinition")["url"]
        == (await clinic.run("program.define", DIABETES_V1)).resource("PlanDefinition")["url"]
    )


async def test_revises_must_name_a_version_of_the_same_name() -> None:
    clinic = Clinic()
    copd = await define(clinic, DIABETES_V1 | {"name": "copd"})
    with pytest.raises(InvalidValue) as refused:
        await clinic.run("program.define", DIABETES_V1 | {"revises": copd})
    assert refused.value.path == "data.revises"
    with pytest.raises(NotFound):
        await clinic.run("program.define", DIABETES_V1 | {"revises": "no-such-program"})
    assert len(clinic.database.programs) == 1


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"activities": [{"key": "a1c", "description": "twice"}]}, "data.activities.0.key"),
        (
            {"activities": [{"key": "lab", "description": "x", "goal_keys": ["weight"]}]},
            "data.activities.0.goal_keys.0",
        ),
        (
            {
                "goals": [
                    {
                        "key": "g",
                        "description": {"text": "g"},
                        "targets": [{"measure": A1C, "detail": {"string": "low"}}],
                    }
                ]
            },
            "data.goals.0.targets.0.detail",
        ),
    ],
)
async def test_bad_content_is_a_value_error_with_its_path_and_nothing_is_written(
    change: dict[str, Any], path: str
) -> None:
    clinic = Clinic()
    with pytest.raises(InvalidValue) as refused:
        await clinic.run("program.define", DIABETES_V1 | change)
    assert refused.value.path == path
    assert clinic.database.programs == {}


async def test_a_draft_takes_a_merge_patch_and_paths_name_the_change() -> None:
    clinic = Clinic()
    program_id = await define(clinic)
    outcome = await clinic.run(
        "program.update",
        {"program_id": program_id, "changes": {"title": "Type 2 diabetes, adults", "review": None}},
        expected_version=1,
    )
    resource = outcome.resource("PlanDefinition")
    assert resource["title"] == "Type 2 diabetes, adults"
    assert "extension" not in resource  # the review interval was removed
    assert [a["id"] for a in resource["action"]] == ["a1c-lab", "foot-exam"]  # untouched
    assert [e[0] for e in outcome.events] == ["program.updated"]
    with pytest.raises(InvalidValue) as refused:
        await clinic.run(
            "program.update",
            {"program_id": program_id, "changes": {"activities": [{"key": "a1c", "description": "dup"}]}},
            expected_version=2,
        )
    assert refused.value.path == "data.changes.activities.0.key"


async def test_publish_then_retire_and_a_published_version_never_changes() -> None:
    clinic = Clinic()
    program_id = await define(clinic)
    published = await clinic.run("program.change_status", {"program_id": program_id, "status": "active"})
    assert published.resource("PlanDefinition")["status"] == "active"
    assert [e[0] for e in published.events] == ["program.published"]
    with pytest.raises(ClosedForChanges):
        await clinic.run(
            "program.update", {"program_id": program_id, "changes": {"title": "x"}}, expected_version=2
        )
    retired = await clinic.run("program.change_status", {"program_id": program_id, "status": "retired"})
    assert [e[0] for e in retired.events] == ["program.retired"]
    with pytest.raises(InvalidTransition):
        await clinic.run("program.change_status", {"program_id": program_id, "status": "active"})


# --- enrolment ---


async def active_program(clinic: Clinic) -> str:
    program_id = await define(clinic)
    await clinic.run("program.change_status", {"program_id": program_id, "status": "active"})
    return program_id


async def test_enrolment_makes_the_plan_its_goals_and_tasks_each_tied_to_its_key() -> None:
    clinic = Clinic()
    await active_program(clinic)
    outcome = await clinic.run(
        "careplan.enroll",
        {
            "patient_id": "p1",
            "program": "type-2-diabetes",
            "start": "2027-01-31",
            "owners": {"a1c-lab": "pr1"},
        },
    )
    assert outcome.reply.status == 201
    for version in outcome.record.versions:
        validate_resource(version.resource)
    plan = outcome.resource("CarePlan")
    assert plan["instantiatesCanonical"] == [
        f"https://care-plan-service.dev/fhir/programs/{TENANT}/type-2-diabetes|1"
    ]
    assert (plan["title"], plan["status"], plan["period"]) == (
        "Type 2 diabetes",
        "active",
        {"start": "2027-01-31"},
    )
    assert len(plan["goal"]) == 1 and len(plan["activity"]) == 2
    goal = outcome.resource("Goal")
    assert goal["extension"] == [
        {"url": "https://care-plan-service.dev/fhir/StructureDefinition/program-key", "valueId": "a1c"}
    ]
    assert goal["target"][0]["dueDate"] == "2027-07-31"  # P6M after the start
    tasks = {
        next(e["valueId"] for e in t["extension"] if e["url"].endswith("/program-key")): t
        for t in (v.resource for v in outcome.record.versions if v.resource_type == "Task")
    }
    assert tasks["a1c-lab"]["owner"] == {"reference": "Practitioner/pr1"}
    assert tasks["a1c-lab"]["status"] == "requested"
    assert tasks["foot-exam"]["restriction"]["period"] == {"start": "2027-04-30", "end": "2027-05-28"}
    assert sorted(e[0] for e in outcome.events) == [
        "activity.added",
        "activity.added",
        "careplan.created",
        "careplan.enrolled",
        "goal.added",
    ]
    assert outcome.operation == "CREATE"


async def test_enrolment_skips_keys_and_a_draft_plan_has_draft_items() -> None:
    clinic = Clinic()
    await active_program(clinic)
    outcome = await clinic.run(
        "careplan.enroll",
        {"patient_id": "p1", "program": "type-2-diabetes|1", "status": "draft", "skip": ["foot-exam"]},
    )
    assert [v.resource_type for v in outcome.record.versions].count("Task") == 1
    assert outcome.resource("Task")["status"] == "draft"
    assert outcome.resource("Goal")["lifecycleStatus"] == "proposed"


async def test_enrolment_takes_the_newest_active_version_of_a_name() -> None:
    clinic = Clinic()
    await active_program(clinic)
    second = await define(clinic, DIABETES_V1 | {"title": "Type 2 diabetes v2"})
    await clinic.run("program.change_status", {"program_id": second, "status": "active"})
    await define(clinic, DIABETES_V1 | {"title": "a draft v3"})
    outcome = await clinic.run("careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes"})
    assert outcome.resource("CarePlan")["instantiatesCanonical"][0].endswith("|2")


async def test_enrolling_into_a_draft_or_retired_or_unknown_program_is_refused_and_nothing_is_written() -> (
    None
):
    clinic = Clinic()
    draft = await define(clinic)
    with pytest.raises(InvalidTransition):
        await clinic.run("careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes|1"})
    with pytest.raises(NotFound):  # no active version of the name
        await clinic.run("careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes"})
    await clinic.run("program.change_status", {"program_id": draft, "status": "retired"})
    with pytest.raises(InvalidTransition):
        await clinic.run("careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes|1"})
    with pytest.raises(NotFound):
        await clinic.run("careplan.enroll", {"patient_id": "p1", "program": "copd"})
    await active_program(clinic)
    with pytest.raises(InvalidValue) as refused:
        await clinic.run(
            "careplan.enroll", {"patient_id": "p1", "program": "type-2-diabetes", "skip": ["eye"]}
        )
    assert refused.value.path == "data.skip.eye"
    assert clinic.database.plans == {}
