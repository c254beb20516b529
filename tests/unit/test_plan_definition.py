"""A program version renders as an R4 `clinical-protocol` PlanDefinition: keys as goal and action ids,
`goalId` naming goal keys, durations as UCUM Durations; every generated version passes fhir.resources."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.entities import Quantity, TargetDetail
from domain.fhir import ACTIVITY_DURATION_EXTENSION, PROGRAM_REVIEW_EXTENSION, render_resource
from domain.programs import (
    ActivityTemplate,
    Duration,
    GoalTemplate,
    Program,
    ProgramContent,
    PublicationStatus,
    TargetTemplate,
)
from domain.values import CodeableConcept, Coding
from schemas.fhir_validation import validate_resource

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
A1C = CodeableConcept((Coding("http://loinc.org", "4548-4", "Hemoglobin A1c"),))
URL = "https://care-plan-service.dev/fhir/programs/t1/type-2-diabetes"


def version(content: ProgramContent, status: PublicationStatus = PublicationStatus.ACTIVE) -> Program:
    return Program(
        id="3f0c1a7e-0000-4000-8000-000000000001",
        version=2,
        created=NOW,
        last_updated=NOW,
        name="type-2-diabetes",
        url=URL,
        program_version="1",
        status=status,
        content=content,
    )


def test_a_diabetes_programme_renders_as_a_clinical_protocol() -> None:
    content = ProgramContent(
        title="Type 2 diabetes",
        description="Quarterly review, HbA1c under 7 %",
        categories=(CodeableConcept(text="Chronic disease management"),),
        addresses=(
            CodeableConcept((Coding("http://snomed.info/sct", "44054006", "Diabetes mellitus type 2"),)),
        ),
        review_interval_days=90,
        goals=(
            GoalTemplate(
                key="a1c",
                description=CodeableConcept(text="HbA1c below 7 %"),
                targets=(
                    TargetTemplate(
                        measure=A1C,
                        detail=TargetDetail(kind="quantity", quantity=Quantity(value=7, unit="%")),
                        due_after=Duration.parse("P6M", "p"),
                    ),
                ),
            ),
        ),
        activities=(
            ActivityTemplate(
                key="a1c-lab",
                description="HbA1c test",
                code=A1C,
                kind="ServiceRequest",
                goal_keys=("a1c",),
                priority="routine",
                start_after=Duration.parse("P12W", "p"),
                duration=Duration.parse("P2W", "p"),
            ),
        ),
    )
    kind, resource = render_resource(version(content))
    validate_resource(resource)
    assert kind == "PlanDefinition"
    assert resource["type"]["coding"][0]["code"] == "clinical-protocol"
    assert (resource["url"], resource["version"], resource["name"], resource["status"]) == (
        URL,
        "1",
        "type-2-diabetes",
        "active",
    )
    assert resource["meta"]["versionId"] == "2"  # the resource's version, not the program's
    (goal,) = resource["goal"]
    assert goal["id"] == "a1c"
    assert goal["target"][0]["detailQuantity"] == {"value": 7, "unit": "%"}
    assert goal["target"][0]["due"] == {
        "value": 6,
        "unit": "months",
        "system": "http://unitsofmeasure.org",
        "code": "mo",
    }
    (action,) = resource["action"]
    assert (action["id"], action["title"], action["goalId"], action["priority"]) == (
        "a1c-lab",
        "HbA1c test",
        ["a1c"],
        "routine",
    )
    assert action["timingDuration"]["code"] == "wk" and action["timingDuration"]["value"] == 12
    duration = next(e for e in action["extension"] if e["url"] == ACTIVITY_DURATION_EXTENSION)
    assert duration["valueDuration"]["value"] == 2
    review = next(e for e in resource["extension"] if e["url"] == PROGRAM_REVIEW_EXTENSION)
    assert review["valueDuration"] == {
        "value": 90,
        "unit": "days",
        "system": "http://unitsofmeasure.org",
        "code": "d",
    }


durations = st.builds(Duration, st.integers(0, 500), st.sampled_from("YMWD"))
concepts = st.one_of(
    st.builds(lambda t: CodeableConcept(text=t), st.text(min_size=1, max_size=30).filter(str.strip)),
    st.just(A1C),
)
quantities = st.builds(
    Quantity, value=st.floats(-1e6, 1e6, allow_nan=False), unit=st.sampled_from([None, "%", "mmHg"])
)
details = st.one_of(
    st.none(),
    st.builds(lambda q: TargetDetail(kind="quantity", quantity=q), quantities),
    st.builds(lambda lo, hi: TargetDetail(kind="range", low=lo, high=hi), quantities, st.none() | quantities),
    st.builds(lambda c: TargetDetail(kind="coded", coded=c), concepts),
)
targets = st.builds(
    TargetTemplate, measure=st.none() | concepts, detail=details, due_after=st.none() | durations
)


@st.composite
def contents(draw: st.DrawFn) -> ProgramContent:
    keys = draw(st.lists(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), unique=True, max_size=12))
    split = draw(st.integers(0, len(keys)))
    goal_keys, activity_keys = keys[:split], keys[split:]
    goals = tuple(
        GoalTemplate(
            key=k,
            description=draw(concepts),
            priority=draw(st.none() | concepts),
            targets=tuple(draw(st.lists(targets, max_size=3))),
        )
        for k in goal_keys
    )
    activities = tuple(
        ActivityTemplate(
            key=k,
            description=draw(st.text(min_size=1, max_size=40).filter(str.strip)),
            code=draw(st.none() | concepts),
            kind=draw(st.sampled_from([None, "ServiceRequest", "Appointment"])),
            goal_keys=tuple(draw(st.lists(st.sampled_from(goal_keys), unique=True))) if goal_keys else (),
            priority=draw(st.sampled_from([None, "routine", "urgent", "asap", "stat"])),
            start_after=draw(st.none() | durations),
            duration=draw(st.none() | durations),
        )
        for k in activity_keys
    )
    return ProgramContent(
        title=draw(st.text(min_size=1, max_size=60).filter(str.strip)),
        description=draw(st.none() | st.text(min_size=1, max_size=60).filter(str.strip)),
        categories=tuple(draw(st.lists(concepts, max_size=2))),
        addresses=tuple(draw(st.lists(concepts, max_size=2))),
        review_interval_days=draw(st.none() | st.integers(1, 3660)),
        goals=goals,
        activities=activities,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=contents(), status=st.sampled_from(PublicationStatus))
def test_every_program_version_renders_valid_r4(content: ProgramContent, status: PublicationStatus) -> None:
    _, resource = render_resource(version(content, status))
    validate_resource(resource)
    assert [g["id"] for g in resource.get("goal", [])] == [g.key for g in content.goals]
    assert [a["id"] for a in resource.get("action", [])] == [a.key for a in content.activities]
    goal_ids = {g["id"] for g in resource.get("goal", [])}
    assert all(set(a.get("goalId", [])) <= goal_ids for a in resource.get("action", []))
