"""The resources a care plan is made of, as plain records: CarePlan, Goal, Activity (FHIR Task), CareTeam.
Their rules live on the aggregate (domain.care_plan), which changes them together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from domain.statuses import (
    CarePlanIntent,
    CarePlanStatus,
    CareTeamStatus,
    GoalAchievement,
    GoalLifecycleStatus,
    TaskStatus,
)
from domain.values import CodeableConcept, Note, Period


@dataclass(slots=True)
class Versioned:
    """Every resource has a version that grows by one with each change, and the time of that change."""

    id: str
    version: int
    created: datetime
    last_updated: datetime


@dataclass(slots=True, kw_only=True)
class ReviewState:
    """When the plan is reviewed: the interval, the next due date, and how the last review ended."""

    interval_days: int | None = None
    next_due: date | None = None
    last_reviewed: date | None = None
    last_outcome: str | None = None


@dataclass(slots=True, kw_only=True)
class CarePlan(Versioned):
    patient_id: str
    title: str
    status: CarePlanStatus
    intent: CarePlanIntent
    description: str | None = None
    encounter_id: str | None = None
    author_id: str | None = None
    categories: tuple[CodeableConcept, ...] = ()
    period: Period | None = None
    addresses: tuple[CodeableConcept, ...] = ()
    review: ReviewState | None = None
    notes: tuple[Note, ...] = ()
    goal_ids: tuple[str, ...] = ()
    activity_ids: tuple[str, ...] = ()
    care_team_id: str | None = None
    status_reason: str | None = None
    instantiates: tuple[str, ...] = ()  # canonical `<url>|<version>` of the program it was enrolled in


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantity:
    value: float
    unit: str | None = None
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetDetail:
    """Exactly one of the R4 `target.detail[x]` choices is set; `kind` says which."""

    kind: str  # quantity | range | coded | string | boolean | integer | ratio
    quantity: Quantity | None = None
    low: Quantity | None = None
    high: Quantity | None = None
    numerator: Quantity | None = None
    denominator: Quantity | None = None
    coded: CodeableConcept | None = None
    string: str | None = None
    boolean: bool | None = None
    integer: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalTarget:
    measure: CodeableConcept | None = None
    detail: TargetDetail | None = None
    due_date: date | None = None


@dataclass(slots=True, kw_only=True)
class Goal(Versioned):
    plan_id: str
    patient_id: str
    description: CodeableConcept
    lifecycle_status: GoalLifecycleStatus
    status_date: date
    achievement_status: GoalAchievement | None = None
    priority: CodeableConcept | None = None
    categories: tuple[CodeableConcept, ...] = ()
    start_date: date | None = None
    targets: tuple[GoalTarget, ...] = ()
    addresses: tuple[CodeableConcept, ...] = ()
    notes: tuple[Note, ...] = ()
    status_reason: str | None = None
    program_key: str | None = None  # the program goal it was made from (CONTRACT §10); None: by hand


@dataclass(slots=True, kw_only=True)
class Activity(Versioned):
    """An intervention of the plan, exposed as a FHIR Task (basedOn → the plan, `for` → the patient).
    A review Task (`is_review`) focuses on the plan instead and is not one of its activities."""

    plan_id: str
    patient_id: str
    description: str
    status: TaskStatus
    intent: str = "plan"
    code: CodeableConcept | None = None
    kind: str | None = None
    goal_ids: tuple[str, ...] = ()
    owner_id: str | None = None
    requester_id: str | None = None
    priority: str | None = None
    scheduled: Period | None = None
    execution_start: datetime | None = None
    execution_end: datetime | None = None
    status_reason: str | None = None
    outcome: CodeableConcept | None = None
    is_review: bool = False
    held_by_plan: bool = False  # put on hold because the plan was; resumed when the plan is
    program_key: str | None = None  # the program activity it was made from (CONTRACT §10); None: by hand


@dataclass(frozen=True, slots=True, kw_only=True)
class Participant:
    member_id: str
    role: CodeableConcept
    on_behalf_of: str | None = None
    period: Period | None = None

    def is_current(self, today: date) -> bool:
        end = self.period.end if self.period is not None else None
        if end is None:
            return True
        end_day = end.date() if isinstance(end, datetime) else end
        return end_day >= today


@dataclass(slots=True, kw_only=True)
class CareTeam(Versioned):
    plan_id: str
    patient_id: str
    name: str
    status: CareTeamStatus
    participants: tuple[Participant, ...] = ()
