"""The CarePlan aggregate and its FHIR rendering, without I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from fhir.resources.R4B.careplan import CarePlan as FhirCarePlan

from domain.care_plan import CarePlan, CarePlanIntent, CarePlanStatus
from domain.errors import InvalidTransition, InvalidValue
from domain.events import CarePlanCreated
from domain.fhir import render_care_plan, render_provenance
from domain.values import CodeableConcept, Coding, Note, Period, ReviewSchedule

NOW = datetime(2026, 11, 25, 10, 30, 0, 123456, tzinfo=UTC)


def new_plan(**kwargs: object) -> CarePlan:
    return CarePlan.create(plan_id="cp-1", patient_id="p-1", title="Diabetes", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_new_plan_starts_at_version_one_and_records_its_creation() -> None:
    plan = new_plan()
    assert plan.version == 1
    assert plan.status is CarePlanStatus.DRAFT
    assert plan.intent is CarePlanIntent.PLAN
    assert plan.events == [CarePlanCreated(resource_type="CarePlan", resource_id="cp-1", version=1)]


@pytest.mark.parametrize("status", [CarePlanStatus.DRAFT, CarePlanStatus.ACTIVE])
def test_plan_may_start_as_draft_or_active(status: CarePlanStatus) -> None:
    assert new_plan(status=status).status is status


@pytest.mark.parametrize(
    "status", [s for s in CarePlanStatus if s not in (CarePlanStatus.DRAFT, CarePlanStatus.ACTIVE)]
)
def test_plan_cannot_start_in_any_other_status(status: CarePlanStatus) -> None:
    with pytest.raises(InvalidTransition) as raised:
        new_plan(status=status)
    assert raised.value.from_ is None
    assert raised.value.to == status.value
    assert raised.value.allowed == ("draft", "active")


def test_period_cannot_end_before_it_starts() -> None:
    with pytest.raises(InvalidValue) as raised:
        Period(start=date(2026, 11, 2), end=date(2026, 11, 1))
    assert raised.value.path == "period.end"


def test_period_compares_dates_with_date_times() -> None:
    Period(start=date(2026, 11, 1), end=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))


def test_rendered_plan_is_valid_fhir_and_us_core_shaped() -> None:
    plan = new_plan(
        status=CarePlanStatus.ACTIVE,
        description="<script>alert(1)</script>",
        addresses=(CodeableConcept(codings=(Coding("http://snomed.info/sct", "44054006", "Diabetes"),)),),
        review=ReviewSchedule(interval_days=90, next_due=date(2027, 2, 1)),
        notes=(Note(text="Prefers mornings", author_id="dr-1", time=NOW),),
        period=Period(start=date(2026, 11, 1)),
    )
    resource = render_care_plan(plan)
    FhirCarePlan.model_validate(resource)
    assert resource["meta"] == {
        "versionId": "1",
        "lastUpdated": "2026-11-25T10:30:00.123Z",
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan"],
    }
    assert resource["category"][0]["coding"][0]["code"] == "assess-plan"
    assert resource["text"]["status"] == "generated"
    # Caller text is escaped in the narrative, never rendered as markup.
    assert "<script>" not in resource["text"]["div"]
    assert "&lt;script&gt;" in resource["text"]["div"]
    assert resource["addresses"] == [
        {
            "type": "Condition",
            "identifier": {"system": "http://snomed.info/sct", "value": "44054006"},
            "display": "Diabetes",
        }
    ]
    assert resource["extension"][0]["extension"] == [
        {"url": "intervalDays", "valueUnsignedInt": 90},
        {"url": "nextReviewDue", "valueDate": "2027-02-01"},
    ]
    assert resource["note"] == [
        {
            "text": "Prefers mornings",
            "authorReference": {"reference": "Practitioner/dr-1"},
            "time": "2026-11-25T10:30:00.123Z",
        }
    ]


def test_caller_categories_replace_the_default() -> None:
    own = CodeableConcept(codings=(Coding("http://snomed.info/sct", "734163000"),))
    resource = render_care_plan(new_plan(categories=(own,)))
    assert resource["category"] == [{"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}]


def test_provenance_of_an_update_points_at_the_previous_version() -> None:
    provenance = render_provenance(
        provenance_id="prov-1",
        recorded=NOW,
        targets=[("CarePlan", "cp-1", 3)],
        operation="UPDATE",
        command_type="careplan.update",
        agent_subject="dr-1",
        agent_issuer="https://identity.example",
        token_id="jti-1",
    )
    assert provenance["target"] == [{"reference": "CarePlan/cp-1/_history/3"}]
    assert provenance["entity"] == [{"role": "revision", "what": {"reference": "CarePlan/cp-1/_history/2"}}]
    assert provenance["agent"][0]["who"]["identifier"] == {
        "system": "https://identity.example",
        "value": "dr-1",
    }
    assert provenance["policy"] == ["urn:care-plan-service:jwt-id:jti-1"]
