"""The CarePlan aggregate: the plan of care for one patient, versioned, with its FHIR R4 status rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from domain.errors import InvalidTransition
from domain.events import CarePlanCreated, DomainEvent
from domain.values import CodeableConcept, Note, Period, ReviewSchedule


class CarePlanStatus(StrEnum):
    """FHIR R4 RequestStatus (http://hl7.org/fhir/request-status)."""

    DRAFT = "draft"
    ACTIVE = "active"
    ON_HOLD = "on-hold"
    REVOKED = "revoked"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"
    UNKNOWN = "unknown"


class CarePlanIntent(StrEnum):
    """FHIR R4 CarePlanIntent; immutable once the plan exists (DOMAIN.md §1.1)."""

    PROPOSAL = "proposal"
    PLAN = "plan"
    ORDER = "order"
    OPTION = "option"


# A plan may be born as a draft or go straight to active (DOMAIN.md §1.2, service table).
STATUSES_AT_CREATE: tuple[CarePlanStatus, ...] = (CarePlanStatus.DRAFT, CarePlanStatus.ACTIVE)


@dataclass(slots=True)
class CarePlan:
    """One patient's plan of care. `version` grows by one with every accepted change."""

    id: str
    patient_id: str
    title: str
    status: CarePlanStatus
    intent: CarePlanIntent
    created: datetime
    last_updated: datetime
    version: int = 1
    description: str | None = None
    encounter_id: str | None = None
    author_id: str | None = None
    categories: tuple[CodeableConcept, ...] = ()
    period: Period | None = None
    addresses: tuple[CodeableConcept, ...] = ()
    review: ReviewSchedule | None = None
    notes: tuple[Note, ...] = ()
    events: list[DomainEvent] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        *,
        plan_id: str,
        patient_id: str,
        title: str,
        now: datetime,
        status: CarePlanStatus = CarePlanStatus.DRAFT,
        intent: CarePlanIntent = CarePlanIntent.PLAN,
        description: str | None = None,
        encounter_id: str | None = None,
        author_id: str | None = None,
        categories: tuple[CodeableConcept, ...] = (),
        period: Period | None = None,
        addresses: tuple[CodeableConcept, ...] = (),
        review: ReviewSchedule | None = None,
        notes: tuple[Note, ...] = (),
    ) -> CarePlan:
        """Start a plan; only `draft` and `active` are valid first statuses."""
        if status not in STATUSES_AT_CREATE:
            raise InvalidTransition(
                field="status",
                from_=None,
                to=status.value,
                allowed=tuple(s.value for s in STATUSES_AT_CREATE),
            )
        plan = cls(
            id=plan_id,
            patient_id=patient_id,
            title=title,
            status=status,
            intent=intent,
            created=now,
            last_updated=now,
            description=description,
            encounter_id=encounter_id,
            author_id=author_id,
            categories=categories,
            period=period,
            addresses=addresses,
            review=review,
            notes=notes,
        )
        plan.events.append(CarePlanCreated(resource_type="CarePlan", resource_id=plan_id, version=1))
        return plan
