"""The CarePlan aggregate and its FHIR rendering, without I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.careplan import CarePlan as FhirCarePlan

from domain.care_plan import CarePlanAggregate
from domain.entities import ReviewState
from domain.errors import ClosedForChanges, InvalidTransition, InvalidValue, VersionConflict
from domain.events import DomainEvent
from domain.fhir import render_care_plan, render_provenance
from domain.statuses import CarePlanStatus
from domain.values import CodeableConcept, Coding, Note, Period

NOW = datetime(2026, 11, 25, 10, 30, 0, 123456, tzinfo=UTC)


def new_plan(**kwargs: Any) -> CarePlanAggregate:
    """A plan just created: its creation event still pending."""
    return CarePlanAggregate.create(plan_id="cp-1", patient_id="p-1", title="Diabetes", now=NOW, **kwargs)


def test_new_plan_starts_at_version_one_and_records_its_creation() -> None:
    aggregate = new_plan()
    assert aggregate.plan.version == 1
    assert aggregate.plan.status is CarePlanStatus.DRAFT
    assert aggregate.events == [DomainEvent("careplan.created", "CarePlan", "cp-1", 1)]


@pytest.mark.parametrize("status", [CarePlanStatus.DRAFT, CarePlanStatus.ACTIVE])
def test_plan_may_start_as_draft_or_active(status: CarePlanStatus) -> None:
    assert new_plan(status=status).plan.status is status


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


def test_stale_version_is_rejected_with_current_version() -> None:
    aggregate = new_plan(status=CarePlanStatus.ACTIVE)
    aggregate.mark_stored()
    aggregate.update({"title": "New"}, expected_version=1, now=NOW)
    aggregate.mark_stored()
    with pytest.raises(VersionConflict) as raised:
        aggregate.update({"title": "Newer"}, expected_version=1, now=NOW)
    assert raised.value.current == 2


def test_one_command_bumps_each_resource_once_even_with_several_events() -> None:
    aggregate = new_plan(status=CarePlanStatus.ACTIVE)
    aggregate.mark_stored()
    aggregate.complete_review(
        outcome="discontinue",
        notes=(Note(text="no longer needed"),),
        next_review_due=None,
        expected_version=1,
        now=NOW,
    )
    assert aggregate.plan.version == 2
    assert [e.name for e in aggregate.events] == ["careplan.status_changed", "careplan.reviewed"]
    assert {e.version for e in aggregate.events} == {2}
    assert aggregate.plan.status is CarePlanStatus.REVOKED


def test_next_review_due_follows_the_interval() -> None:
    aggregate = new_plan(status=CarePlanStatus.ACTIVE, review=ReviewState(interval_days=90))
    aggregate.complete_review(outcome="continue", notes=(), next_review_due=None, expected_version=1, now=NOW)
    assert aggregate.plan.review is not None
    assert aggregate.plan.review.next_due == NOW.date() + timedelta(days=90)
    assert aggregate.plan.review.last_reviewed == NOW.date()


def test_only_one_open_review_at_a_time() -> None:
    aggregate = new_plan(status=CarePlanStatus.ACTIVE)
    aggregate.mark_stored()
    aggregate.request_review(review_task_id="r1", reviewer_id=None, due=None, expected_version=1, now=NOW)
    aggregate.mark_stored()
    with pytest.raises(InvalidValue):
        aggregate.request_review(review_task_id="r2", reviewer_id=None, due=None, expected_version=2, now=NOW)


def test_completing_an_on_hold_plan_needs_every_activity_closed() -> None:
    from domain.entities import Activity
    from domain.statuses import TaskStatus

    aggregate = new_plan(status=CarePlanStatus.ACTIVE)
    activity = Activity(
        id="t1", version=0, created=NOW, last_updated=NOW, plan_id="", patient_id="", description="x",
        status=TaskStatus.READY,
    )  # fmt: skip
    aggregate.mark_stored()
    aggregate.add_activity(activity, expected_version=None, now=NOW)
    aggregate.mark_stored()
    aggregate.change_status(CarePlanStatus.ON_HOLD, reason=None, expected_version=2, now=NOW)
    aggregate.mark_stored()
    with pytest.raises(InvalidTransition):
        aggregate.change_status(CarePlanStatus.COMPLETED, reason=None, expected_version=3, now=NOW)


def test_closed_plan_takes_no_changes() -> None:
    aggregate = new_plan(status=CarePlanStatus.ACTIVE)
    aggregate.mark_stored()
    aggregate.change_status(CarePlanStatus.COMPLETED, reason=None, expected_version=1, now=NOW)
    aggregate.mark_stored()
    assert aggregate.plan.period is not None
    assert aggregate.plan.period.end == NOW.date()
    with pytest.raises(ClosedForChanges):
        aggregate.update({"title": "late"}, expected_version=2, now=NOW)


def test_rendered_plan_is_valid_fhir_and_us_core_shaped() -> None:
    aggregate = new_plan(
        status=CarePlanStatus.ACTIVE,
        description="<script>alert(1)</script>",
        addresses=(CodeableConcept(codings=(Coding("http://snomed.info/sct", "44054006", "Diabetes"),)),),
        review=ReviewState(interval_days=90, next_due=date(2027, 2, 1)),
        notes=(Note(text="Prefers mornings", author_id="dr-1", time=NOW),),
        period=Period(start=date(2026, 11, 1)),
    )
    resource = render_care_plan(aggregate.plan)
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
    resource = render_care_plan(new_plan(categories=(own,)).plan)
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
