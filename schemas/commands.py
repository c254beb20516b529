"""Command envelopes and each command's `data` (CONTRACT §2 and §4)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from schemas.common import (
    CodeableConceptIn,
    FhirId,
    LongText,
    NoteIn,
    PeriodIn,
    QuantityIn,
    RangeIn,
    RatioIn,
    ShortText,
    WireModel,
    not_null_schema,
)

MAX_BODY_BYTES = 256 * 1024
# No command nests anywhere near this deep; the bound keeps hostile bodies from failing late.
MAX_JSON_DEPTH = 32
COMMAND_SUBJECT_PREFIX = "careplan.cmd."


def _notes_as_objects(notes: object) -> object:
    """A note may be given as plain text; it is then a note with no author or time."""
    if isinstance(notes, list):
        return [{"text": n} if isinstance(n, str) else n for n in notes]
    return notes


# A note may be plain text or {text, author_id, time}.
Notes = Annotated[list[NoteIn], BeforeValidator(_notes_as_objects)]


# The wire contract's version (CONTRACT.md v1): the `info.version` of the OpenAPI and AsyncAPI documents.
CONTRACT_VERSION = "1"


class CommandEnvelope(WireModel):
    """The body of every command message. `data` is validated per command, once the command is known."""

    command_id: UUID
    expected_version: int | None = Field(default=None, ge=1)
    data: dict[str, Any]


class ReviewIn(WireModel):
    interval_days: int | None = Field(default=None, ge=1, le=3660)
    next_due: date | None = None


class CarePlanCreate(WireModel):
    """`careplan.create`."""

    id: FhirId | None = None
    patient_id: FhirId
    title: ShortText
    description: LongText | None = None
    encounter_id: FhirId | None = None
    status: Literal["draft", "active"] = "draft"
    intent: Literal["proposal", "plan", "order", "option"] = "plan"
    categories: list[CodeableConceptIn] = Field(default_factory=list, max_length=20)
    period: PeriodIn | None = None
    addresses: list[CodeableConceptIn] = Field(default_factory=list, max_length=50)
    author_id: FhirId | None = None
    review: ReviewIn | None = None
    notes: Notes = Field(default_factory=list, max_length=100)


CarePlanStatusIn = Literal["draft", "active", "on-hold", "revoked", "completed", "entered-in-error"]
GoalLifecycleIn = Literal[
    "proposed",
    "planned",
    "accepted",
    "active",
    "on-hold",
    "completed",
    "cancelled",
    "entered-in-error",
    "rejected",
]
GoalAchievementIn = Literal[
    "in-progress",
    "improving",
    "worsening",
    "no-change",
    "achieved",
    "sustaining",
    "not-achieved",
    "no-progress",
    "not-attainable",
]
TaskStatusIn = Literal[
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
]
ActivityKindIn = Literal[
    "Appointment",
    "CommunicationRequest",
    "DeviceRequest",
    "MedicationRequest",
    "NutritionOrder",
    "Task",
    "ServiceRequest",
    "VisionPrescription",
]
Reason = ShortText


class CarePlanChanges(WireModel):
    """A merge-patch of the create fields: a field given is set, `null` clears it, an absent one stays."""

    title: ShortText | None = None
    description: LongText | None = None
    encounter_id: FhirId | None = None
    intent: Literal["proposal", "plan", "order", "option"] | None = None
    patient_id: FhirId | None = None
    categories: list[CodeableConceptIn] | None = Field(default=None, max_length=20)
    period: PeriodIn | None = None
    addresses: list[CodeableConceptIn] | None = Field(default=None, max_length=50)
    author_id: FhirId | None = None
    review: ReviewIn | None = None
    notes: Notes | None = Field(default=None, max_length=100)


class CarePlanUpdate(WireModel):
    """`careplan.update`."""

    care_plan_id: FhirId
    changes: CarePlanChanges


class CarePlanChangeStatus(WireModel):
    """`careplan.change_status`."""

    care_plan_id: FhirId
    status: CarePlanStatusIn
    reason: Reason | None = None


class CarePlanRequestReview(WireModel):
    """`careplan.request_review`."""

    care_plan_id: FhirId
    reviewer_id: FhirId | None = None
    due: date | None = None


class CarePlanCompleteReview(WireModel):
    """`careplan.complete_review`."""

    care_plan_id: FhirId
    outcome: Literal["continue", "revise", "discontinue"]
    notes: Notes = Field(default_factory=list, max_length=100)
    next_review_due: date | None = None


class TargetDetailIn(WireModel):
    """Exactly one of the R4 `target.detail[x]` choices."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    quantity: QuantityIn | None = None
    range: RangeIn | None = None
    coded: CodeableConceptIn | None = None
    string: ShortText | None = None
    boolean: bool | None = None
    integer: int | None = None
    ratio: RatioIn | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetDetailIn:
        if len(self.model_fields_set) != 1:
            raise ValueError("give exactly one of quantity, range, coded, string, boolean, integer, ratio")
        return self


class _MeasuredTarget(WireModel):
    """A target's measure and detail: a detail needs its measure (FHIR gol-1)."""

    model_config = ConfigDict(
        json_schema_extra={"if": not_null_schema("detail"), "then": not_null_schema("measure")}
    )

    measure: CodeableConceptIn | None = None
    detail: TargetDetailIn | None = None

    @model_validator(mode="after")
    def _detail_needs_measure(self) -> Self:
        if self.detail is not None and self.measure is None:
            raise ValueError("a target with a detail needs its measure (FHIR gol-1)")
        return self


class GoalTargetIn(_MeasuredTarget):
    due_date: date | None = None


class GoalAdd(WireModel):
    """`goal.add`."""

    care_plan_id: FhirId
    id: FhirId | None = None
    description: CodeableConceptIn
    lifecycle_status: GoalLifecycleIn = "proposed"
    achievement_status: GoalAchievementIn | None = None
    priority: CodeableConceptIn | None = None
    category: list[CodeableConceptIn] = Field(default_factory=list, max_length=20)
    start_date: date | None = None
    targets: list[GoalTargetIn] = Field(default_factory=list, max_length=20)
    addresses: list[CodeableConceptIn] = Field(default_factory=list, max_length=50)
    notes: Notes = Field(default_factory=list, max_length=100)


class GoalChanges(WireModel):
    description: CodeableConceptIn | None = None
    priority: CodeableConceptIn | None = None
    category: list[CodeableConceptIn] | None = Field(default=None, max_length=20)
    start_date: date | None = None
    targets: list[GoalTargetIn] | None = Field(default=None, max_length=20)
    addresses: list[CodeableConceptIn] | None = Field(default=None, max_length=50)
    notes: Notes | None = Field(default=None, max_length=100)


class GoalUpdate(WireModel):
    """`goal.update`."""

    goal_id: FhirId
    changes: GoalChanges


class GoalChangeStatus(WireModel):
    """`goal.change_status`."""

    goal_id: FhirId
    lifecycle_status: GoalLifecycleIn | None = None
    achievement_status: GoalAchievementIn | None = None
    reason: Reason | None = None


class ActivityAdd(WireModel):
    """`activity.add`."""

    care_plan_id: FhirId
    id: FhirId | None = None
    description: LongText
    code: CodeableConceptIn | None = None
    kind: ActivityKindIn | None = None
    goal_ids: list[FhirId] = Field(default_factory=list, max_length=50)
    owner_id: FhirId | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] | None = None
    scheduled: PeriodIn | None = None
    status: Literal["draft", "ready", "requested"] | None = None


class ActivityAssign(WireModel):
    """`activity.assign`."""

    activity_id: FhirId
    owner_id: FhirId


class ActivityChangeStatus(WireModel):
    """`activity.change_status`."""

    activity_id: FhirId
    status: TaskStatusIn
    reason: Reason | None = None
    outcome: CodeableConceptIn | None = None


class CareTeamAddMember(WireModel):
    """`careteam.add_member`."""

    care_plan_id: FhirId
    member_id: FhirId
    role: CodeableConceptIn
    on_behalf_of: FhirId | None = None
    period: PeriodIn | None = None


class MemberChanges(WireModel):
    role: CodeableConceptIn | None = None
    period: PeriodIn | None = None


class CareTeamUpdateMember(WireModel):
    """`careteam.update_member`."""

    care_plan_id: FhirId
    member_id: FhirId
    changes: MemberChanges


class CareTeamRemoveMember(WireModel):
    """`careteam.remove_member`."""

    care_plan_id: FhirId
    member_id: FhirId


# --- care programs (CONTRACT §10) ---

ProgramKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]
ProgramName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]
# ISO 8601, one unit (domain.programs.Duration): P90D, P12W, P6M, P1Y.
DurationText = Annotated[str, StringConstraints(pattern=r"^P\d{1,5}[YMWD]$")]
RequestPriority = Literal["routine", "urgent", "asap", "stat"]


class TemplateTargetIn(_MeasuredTarget):
    """A program goal's target (a quantity, range or coded detail) and when it is due after the
    enrolment's start; it becomes the enrolled Goal's target, where gol-1 applies."""

    due_after: DurationText | None = None


class ProgramGoalIn(WireModel):
    key: ProgramKey
    description: CodeableConceptIn
    priority: CodeableConceptIn | None = None
    targets: list[TemplateTargetIn] = Field(default_factory=list, max_length=20)


class ProgramActivityIn(WireModel):
    key: ProgramKey
    description: ShortText
    code: CodeableConceptIn | None = None
    kind: (
        Literal["Appointment", "CommunicationRequest", "MedicationRequest", "ServiceRequest", "Task"] | None
    ) = None
    goal_keys: list[ProgramKey] = Field(default_factory=list, max_length=50)
    priority: RequestPriority | None = None
    start_after: DurationText | None = None
    duration: DurationText | None = None


class ProgramReviewIn(WireModel):
    interval_days: int = Field(ge=1, le=3660)


class ProgramContentIn(WireModel):
    title: ShortText
    description: LongText | None = None
    categories: list[CodeableConceptIn] = Field(default_factory=list, max_length=20)
    addresses: list[CodeableConceptIn] = Field(default_factory=list, max_length=50)
    review: ProgramReviewIn | None = None
    goals: list[ProgramGoalIn] = Field(default_factory=list, max_length=50)
    activities: list[ProgramActivityIn] = Field(default_factory=list, max_length=100)


class ProgramDefine(ProgramContentIn):
    """`program.define`: a new draft, the next version of `name`."""

    name: ProgramName
    revises: FhirId | None = None


class ProgramChanges(WireModel):
    """A merge patch of a draft's content: a field given replaces it whole (lists too)."""

    title: ShortText | None = None
    description: LongText | None = None
    categories: list[CodeableConceptIn] | None = Field(default=None, max_length=20)
    addresses: list[CodeableConceptIn] | None = Field(default=None, max_length=50)
    review: ProgramReviewIn | None = None
    goals: list[ProgramGoalIn] | None = Field(default=None, max_length=50)
    activities: list[ProgramActivityIn] | None = Field(default=None, max_length=100)


class ProgramUpdate(WireModel):
    """`program.update`: change a draft (define's fields but name)."""

    program_id: FhirId
    changes: ProgramChanges


class ProgramChangeStatus(WireModel):
    """`program.change_status`: publish (`active`) or retire a version."""

    program_id: FhirId
    status: Literal["active", "retired"]
    reason: Reason | None = None


class CarePlanEnroll(WireModel):
    """`careplan.enroll`: a CarePlan with its Goals and Tasks from a published program version."""

    patient_id: FhirId
    # `<name>` (its newest active version) or `<name>|<version>`
    program: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}(\|[1-9][0-9]{0,8})?$")]
    start: date | None = None
    encounter_id: FhirId | None = None
    author_id: FhirId | None = None
    status: Literal["draft", "active"] = "active"
    title: ShortText | None = None
    skip: list[ProgramKey] = Field(default_factory=list, max_length=150)
    owners: dict[ProgramKey, FhirId] = Field(default_factory=dict, max_length=100)


class ProgramRollout(WireModel):
    """`program.rollout`: move plans following older versions of a program to this (active) version. A dry
    run (the default) answers what a run would do and writes nothing; a run is worked in the background."""

    program_id: FhirId
    # Default: every open plan of the tenant following an older version of the program's name.
    care_plan_ids: list[FhirId] | None = Field(default=None, min_length=1, max_length=5000)
    dry_run: bool = True
