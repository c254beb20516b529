"""The FHIR R4 (4.0.1) representation of the aggregates, as plain JSON-ready dicts.

Rendered once per version and stored, so reads never re-render (DESIGN.md, FHIR reads).
"""

from __future__ import annotations

import functools
import html
from datetime import UTC, date, datetime
from typing import Any

from domain.entities import Activity, CarePlan, CareTeam, Goal, GoalTarget, Quantity, Versioned
from domain.programs import ActivityTemplate, GoalTemplate, Program
from domain.statuses import CarePlanStatus, CareTeamStatus, GoalLifecycleStatus, TaskStatus
from domain.values import CodeableConcept, Coding, Note, Period

JSON = dict[str, Any]

US_CORE_CAREPLAN = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan"
US_CORE_GOAL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-goal"
US_CORE_CARETEAM = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careteam"
GOAL_ACHIEVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"
PERTAINS_TO_GOAL = "http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal"
ACTIVITY_KIND_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/activity-kind"
SNOMED = "http://snomed.info/sct"
US_CORE_CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
# Our extension for the review schedule (DOMAIN.md decision 3); documented in README.md.
REVIEW_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/care-plan-review"

# SNOMED CT 425268008 "Review of care plan" (DOMAIN.md §8.3).
REVIEW_CODE = CodeableConcept(codings=(Coding(SNOMED, "425268008", "Review of care plan"),))
ASSESS_PLAN = CodeableConcept(
    codings=(Coding(US_CORE_CAREPLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment"),),
)


@functools.lru_cache(maxsize=1024)
def fhir_instant(moment: datetime) -> str:
    """An R4 `instant`: UTC with milliseconds, e.g. 2026-11-25T10:00:00.123Z. Cached: a command renders
    the same few moments (its `now`, above all) on every resource it writes."""
    utc = moment.astimezone(UTC)
    # Not strftime's %Y: on Linux it does not pad years below 1000, and FHIR wants four digits.
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def fhir_date_or_datetime(value: date | datetime) -> str:
    return fhir_instant(value) if isinstance(value, datetime) else value.isoformat()


def render_codeable_concept(concept: CodeableConcept) -> JSON:
    out: JSON = {}
    if concept.codings:
        out["coding"] = [
            {k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}
            for c in concept.codings
        ]
    if concept.text:
        out["text"] = concept.text
    return out


def render_period(period: Period) -> JSON:
    out: JSON = {}
    if period.start is not None:
        out["start"] = fhir_date_or_datetime(period.start)
    if period.end is not None:
        out["end"] = fhir_date_or_datetime(period.end)
    return out


def render_note(note: Note) -> JSON:
    out: JSON = {"text": note.text}
    if note.author_id:
        out["authorReference"] = {"reference": f"Practitioner/{note.author_id}"}
    if note.time is not None:
        out["time"] = fhir_instant(note.time)
    return out


def render_condition_reference(concept: CodeableConcept) -> JSON:
    """R4 `CarePlan.addresses` is a Reference(Condition): a coded problem becomes a logical reference
    by identifier (system + code), so the code survives without inventing a Condition resource."""
    out: JSON = {"type": "Condition"}
    first = next((c for c in concept.codings if c.code), None)
    if first is not None:
        identifier: JSON = {"value": first.code}
        if first.system:
            identifier["system"] = first.system
        out["identifier"] = identifier
    label = concept.label()
    if label:
        out["display"] = label
    return out


def render_care_plan(plan: CarePlan) -> JSON:
    """CarePlan as US Core 6.1/7.0 CarePlan: `assess-plan` category when the caller gave none,
    a generated narrative, and `meta.profile` declaring the profile."""
    categories = plan.categories or (ASSESS_PLAN,)
    resource = _base("CarePlan", plan, US_CORE_CAREPLAN)
    resource["text"] = {"status": "generated", "div": _narrative(_care_plan_rows(plan))}
    review = plan.review
    if review is not None:
        sub: list[JSON] = []
        if review.interval_days is not None:
            sub.append({"url": "intervalDays", "valueUnsignedInt": review.interval_days})
        if review.next_due is not None:
            sub.append({"url": "nextReviewDue", "valueDate": review.next_due.isoformat()})
        if review.last_reviewed is not None:
            sub.append({"url": "lastReviewed", "valueDate": review.last_reviewed.isoformat()})
        if review.last_outcome is not None:
            sub.append({"url": "lastOutcome", "valueCode": review.last_outcome})
        if sub:
            resource["extension"] = [{"url": REVIEW_EXTENSION, "extension": sub}]
    if plan.instantiates:
        resource["instantiatesCanonical"] = list(plan.instantiates)
    resource["status"] = plan.status.value
    resource["intent"] = plan.intent.value
    resource["category"] = [render_codeable_concept(c) for c in categories]
    resource["title"] = plan.title
    if plan.description:
        resource["description"] = plan.description
    resource["subject"] = {"reference": f"Patient/{plan.patient_id}"}
    if plan.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{plan.encounter_id}"}
    if plan.period is not None:
        resource["period"] = render_period(plan.period)
    resource["created"] = fhir_instant(plan.created)
    if plan.author_id:
        resource["author"] = {"reference": f"Practitioner/{plan.author_id}"}
    if plan.care_team_id:
        resource["careTeam"] = [{"reference": f"CareTeam/{plan.care_team_id}"}]
    if plan.addresses:
        resource["addresses"] = [render_condition_reference(c) for c in plan.addresses]
    if plan.goal_ids:
        resource["goal"] = [{"reference": f"Goal/{g}"} for g in plan.goal_ids]
    if plan.activity_ids:
        # Activities are Tasks, linked both ways (DOMAIN.md decision 1): here, and Task.basedOn → plan.
        resource["activity"] = [{"reference": {"reference": f"Task/{a}"}} for a in plan.activity_ids]
    if plan.notes:
        resource["note"] = [render_note(n) for n in plan.notes]
    return resource


def render_goal(goal: Goal) -> JSON:
    """Goal as US Core Goal: description, subject, lifecycleStatus, and a target due date when given."""
    resource = _base("Goal", goal, US_CORE_GOAL)
    resource["text"] = {
        "status": "generated",
        "div": _narrative(
            [
                ("Goal", goal.description.label()),
                ("Lifecycle", goal.lifecycle_status.value),
                ("Achievement", goal.achievement_status.value if goal.achievement_status else "-"),
            ]
        ),
    }
    if goal.program_key is not None:
        resource["extension"] = [{"url": PROGRAM_KEY_EXTENSION, "valueId": goal.program_key}]
    resource["lifecycleStatus"] = goal.lifecycle_status.value
    if goal.achievement_status is not None:
        code = goal.achievement_status.value
        resource["achievementStatus"] = {
            "coding": [{"system": GOAL_ACHIEVEMENT_SYSTEM, "code": code, "display": _display(code)}]
        }
    if goal.categories:
        resource["category"] = [render_codeable_concept(c) for c in goal.categories]
    if goal.priority is not None:
        resource["priority"] = render_codeable_concept(goal.priority)
    resource["description"] = render_codeable_concept(goal.description)
    resource["subject"] = {"reference": f"Patient/{goal.patient_id}"}
    if goal.start_date is not None:
        resource["startDate"] = goal.start_date.isoformat()
    if goal.targets:
        resource["target"] = [render_target(t) for t in goal.targets]
    resource["statusDate"] = goal.status_date.isoformat()
    if goal.status_reason:
        resource["statusReason"] = goal.status_reason
    if goal.addresses:
        resource["addresses"] = [render_condition_reference(c) for c in goal.addresses]
    if goal.notes:
        resource["note"] = [render_note(n) for n in goal.notes]
    return resource


def render_target(target: GoalTarget) -> JSON:
    out: JSON = {}
    if target.measure is not None:
        out["measure"] = render_codeable_concept(target.measure)
    detail = target.detail
    if detail is not None:
        if detail.kind == "quantity" and detail.quantity is not None:
            out["detailQuantity"] = render_quantity(detail.quantity)
        elif detail.kind == "range":
            out["detailRange"] = {
                k: render_quantity(q)
                for k, q in (("low", detail.low), ("high", detail.high))
                if q is not None
            }
        elif detail.kind == "ratio":
            out["detailRatio"] = {
                k: render_quantity(q)
                for k, q in (("numerator", detail.numerator), ("denominator", detail.denominator))
                if q is not None
            }
        elif detail.kind == "coded" and detail.coded is not None:
            out["detailCodeableConcept"] = render_codeable_concept(detail.coded)
        elif detail.kind == "string" and detail.string is not None:
            out["detailString"] = detail.string
        elif detail.kind == "boolean" and detail.boolean is not None:
            out["detailBoolean"] = detail.boolean
        elif detail.kind == "integer" and detail.integer is not None:
            out["detailInteger"] = detail.integer
    if target.due_date is not None:
        out["dueDate"] = target.due_date.isoformat()
    return out


def render_quantity(quantity: Quantity) -> JSON:
    out: JSON = {"value": quantity.value}
    if quantity.unit:
        out["unit"] = quantity.unit
    if quantity.system:
        out["system"] = quantity.system
    if quantity.code:
        out["code"] = quantity.code
    return out


def render_task(activity: Activity) -> JSON:
    """An activity (or a review) as a Task: basedOn → the plan (or focus → the plan for a review),
    `for` → the patient, owner, due window in restriction.period, actual times in executionPeriod."""
    resource = _base("Task", activity, None)
    resource["text"] = {
        "status": "generated",
        "div": _narrative([("Activity", activity.description), ("Status", activity.status.value)]),
    }
    extensions: list[JSON] = [
        {"url": PERTAINS_TO_GOAL, "valueReference": {"reference": f"Goal/{g}"}} for g in activity.goal_ids
    ]
    if activity.kind:
        extensions.append({"url": ACTIVITY_KIND_EXTENSION, "valueCode": activity.kind})
    if activity.program_key is not None:
        extensions.append({"url": PROGRAM_KEY_EXTENSION, "valueId": activity.program_key})
    if extensions:
        resource["extension"] = extensions
    plan_ref = {"reference": f"CarePlan/{activity.plan_id}"}
    if not activity.is_review:
        resource["basedOn"] = [plan_ref]
    resource["status"] = activity.status.value
    if activity.status_reason:
        resource["statusReason"] = {"text": activity.status_reason}
    resource["intent"] = activity.intent
    if activity.priority:
        resource["priority"] = activity.priority
    code = REVIEW_CODE if activity.is_review else activity.code
    if code is not None:
        resource["code"] = render_codeable_concept(code)
    resource["description"] = activity.description
    if activity.is_review:
        resource["focus"] = plan_ref
    resource["for"] = {"reference": f"Patient/{activity.patient_id}"}
    if activity.execution_start is not None or activity.execution_end is not None:
        execution: JSON = {}
        if activity.execution_start is not None:
            execution["start"] = fhir_instant(activity.execution_start)
        if activity.execution_end is not None:
            execution["end"] = fhir_instant(activity.execution_end)
        resource["executionPeriod"] = execution
    resource["authoredOn"] = fhir_instant(activity.created)
    resource["lastModified"] = fhir_instant(activity.last_updated)
    if activity.requester_id:
        resource["requester"] = {"reference": f"Practitioner/{activity.requester_id}"}
    if activity.owner_id:
        resource["owner"] = {"reference": f"Practitioner/{activity.owner_id}"}
    if activity.scheduled is not None:
        resource["restriction"] = {"period": render_period(activity.scheduled)}
    if activity.outcome is not None:
        resource["output"] = [
            {"type": {"text": "outcome"}, "valueCodeableConcept": render_codeable_concept(activity.outcome)}
        ]
    return resource


def render_care_team(team: CareTeam) -> JSON:
    """CareTeam as US Core CareTeam: subject, status, and each participant's role and member; an ended
    membership keeps its participant with period.end."""
    resource = _base("CareTeam", team, US_CORE_CARETEAM)
    resource["text"] = {
        "status": "generated",
        "div": _narrative(
            [("Team", team.name)]
            + [(p.role.label() or "member", f"Practitioner/{p.member_id}") for p in team.participants]
        ),
    }
    resource["status"] = team.status.value
    resource["name"] = team.name
    resource["subject"] = {"reference": f"Patient/{team.patient_id}"}
    if team.participants:
        participants: list[JSON] = []
        for p in team.participants:
            entry: JSON = {
                "role": [render_codeable_concept(p.role)],
                "member": {"reference": f"Practitioner/{p.member_id}"},
            }
            if p.on_behalf_of:
                entry["onBehalfOf"] = {"reference": f"Organization/{p.on_behalf_of}"}
            if p.period is not None:
                entry["period"] = render_period(p.period)
            participants.append(entry)
        resource["participant"] = participants
    return resource


def _base(resource_type: str, resource: Versioned, profile: str | None) -> JSON:
    meta: JSON = {"versionId": str(resource.version), "lastUpdated": fhir_instant(resource.last_updated)}
    if profile:
        meta["profile"] = [profile]
    return {"resourceType": resource_type, "id": resource.id, "meta": meta}


def _display(code: str) -> str:
    return code.replace("-", " ").capitalize()


def _care_plan_rows(plan: CarePlan) -> list[tuple[str, str]]:
    rows = [
        ("Title", plan.title),
        ("Status", plan.status.value),
        ("Intent", plan.intent.value),
        ("Patient", f"Patient/{plan.patient_id}"),
    ]
    if plan.description:
        rows.append(("Description", plan.description))
    if plan.period is not None:
        start = plan.period.start.isoformat() if plan.period.start else "?"
        end = plan.period.end.isoformat() if plan.period.end else "ongoing"
        rows.append(("Period", f"{start} to {end}"))
    if plan.addresses:
        rows.append(("Addresses", "; ".join(c.label() for c in plan.addresses)))
    return rows


def _narrative(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<div xmlns="http://www.w3.org/1999/xhtml"><table>{body}</table></div>'


V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SUBJECT_IDENTIFIER_SYSTEM = "urn:care-plan-service:jwt-subject"


def render_resource(entity: Versioned) -> tuple[str, JSON]:
    """Any resource of a care plan as its FHIR type and JSON."""
    match entity:
        case CarePlan():
            return "CarePlan", render_care_plan(entity)
        case Goal():
            return "Goal", render_goal(entity)
        case Activity():
            return "Task", render_task(entity)
        case CareTeam():
            return "CareTeam", render_care_team(entity)
        case Program():
            return "PlanDefinition", render_plan_definition(entity)
    raise TypeError(f"cannot render {type(entity).__name__}")


def data_operation(answered: Versioned, changed: list[Versioned]) -> str:
    """The v3-DataOperation of a command's audit record: CREATE when the resource it answers with is new,
    NULLIFY when it marked a resource entered in error (a correction, never a delete), else UPDATE."""
    if answered.version == 1:
        return "CREATE"
    return "NULLIFY" if any(_entered_in_error(entity) for entity in changed) else "UPDATE"


def _entered_in_error(entity: Versioned) -> bool:
    match entity:
        case CarePlan():
            return entity.status is CarePlanStatus.ENTERED_IN_ERROR
        case Goal():
            return entity.lifecycle_status is GoalLifecycleStatus.ENTERED_IN_ERROR
        case Activity():
            return entity.status is TaskStatus.ENTERED_IN_ERROR
        case CareTeam():
            return entity.status is CareTeamStatus.ENTERED_IN_ERROR
        case Program():
            return False  # a publication status has no entered-in-error
    raise TypeError(f"no status on {type(entity).__name__}")


def render_provenance(
    *,
    provenance_id: str,
    recorded: datetime,
    targets: list[tuple[str, str, int]],
    operation: str,
    command_type: str,
    agent_subject: str,
    agent_issuer: str | None,
    token_id: str | None,
) -> JSON:
    """The audit record of one accepted command (DOMAIN.md §7.3): version-specific targets, who (the
    JWT subject, namespaced by its issuer) and what (v3-DataOperation + the command's name)."""
    provenance: JSON = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"versionId": "1", "lastUpdated": fhir_instant(recorded)},
        "target": [{"reference": f"{rtype}/{rid}/_history/{version}"} for rtype, rid, version in targets],
        "recorded": fhir_instant(recorded),
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": operation}], "text": command_type},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE, "code": "author"}]},
                "who": {
                    "identifier": {
                        "system": agent_issuer or SUBJECT_IDENTIFIER_SYSTEM,
                        "value": agent_subject,
                    },
                    "display": agent_subject,
                },
            }
        ],
    }
    revisions = [(rtype, rid, version - 1) for rtype, rid, version in targets if version > 1]
    if revisions:
        provenance["entity"] = [
            {"role": "revision", "what": {"reference": f"{rtype}/{rid}/_history/{version}"}}
            for rtype, rid, version in revisions
        ]
    if token_id:
        provenance["policy"] = [f"urn:care-plan-service:jwt-id:{token_id}"]
    return provenance


# --- care programs (CONTRACT §10): a program version as an R4 PlanDefinition; README maps each field ---

PLAN_DEFINITION_TYPE = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
PROGRAM_ADDRESSES_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/program-addresses"
PROGRAM_REVIEW_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/program-review-interval"
ACTIVITY_DURATION_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/activity-duration"
# On an enrolled Goal or Task: the program key it was made from (a rollout diffs by it).
PROGRAM_KEY_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/program-key"


def render_plan_definition(program: Program) -> JSON:
    """A program version as a `clinical-protocol` PlanDefinition: goals and actions carry their keys as
    element ids, an action's `goalId` names goal keys, its start (an offset from the enrolment's start) is
    `timingDuration` and how long it lasts an extension."""
    content = program.content
    resource = _base("PlanDefinition", program, None)
    resource["text"] = {
        "status": "generated",
        "div": _narrative(
            [
                ("Program", content.title),
                ("Version", program.program_version),
                ("Status", program.status.value),
                ("Goals", str(len(content.goals))),
                ("Activities", str(len(content.activities))),
            ]
        ),
    }
    extensions = [
        {"url": PROGRAM_ADDRESSES_EXTENSION, "valueCodeableConcept": render_codeable_concept(c)}
        for c in content.addresses
    ]
    if content.review_interval_days is not None:
        days = content.review_interval_days
        extensions.append(
            {
                "url": PROGRAM_REVIEW_EXTENSION,
                "valueDuration": {
                    "value": days,
                    "unit": "day" if days == 1 else "days",
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                },
            }
        )
    if extensions:
        resource["extension"] = extensions
    resource |= {
        "url": program.url,
        "version": program.program_version,
        "name": program.name,
        "title": content.title,
        "type": {
            "coding": [
                {"system": PLAN_DEFINITION_TYPE, "code": "clinical-protocol", "display": "Clinical Protocol"}
            ]
        },
        "status": program.status.value,
        "date": fhir_instant(program.last_updated),
    }
    if content.description:
        resource["description"] = content.description
    if content.categories:
        resource["topic"] = [render_codeable_concept(c) for c in content.categories]
    if content.goals:
        resource["goal"] = [_plan_goal(g) for g in content.goals]
    if content.activities:
        resource["action"] = [_plan_action(a) for a in content.activities]
    return resource


def _plan_goal(goal: GoalTemplate) -> JSON:
    out: JSON = {"id": goal.key, "description": render_codeable_concept(goal.description)}
    if goal.priority is not None:
        out["priority"] = render_codeable_concept(goal.priority)
    targets = []
    for target in goal.targets:
        rendered = render_target(GoalTarget(measure=target.measure, detail=target.detail))
        if target.due_after is not None:
            rendered["due"] = target.due_after.fhir()
        targets.append(rendered)
    if targets:
        out["target"] = targets
    return out


def _plan_action(activity: ActivityTemplate) -> JSON:
    out: JSON = {"id": activity.key}
    extensions: list[JSON] = []
    if activity.kind:
        extensions.append({"url": ACTIVITY_KIND_EXTENSION, "valueCode": activity.kind})
    if activity.duration is not None:
        extensions.append({"url": ACTIVITY_DURATION_EXTENSION, "valueDuration": activity.duration.fhir()})
    if extensions:
        out["extension"] = extensions
    out["title"] = activity.description
    if activity.priority:
        out["priority"] = activity.priority
    if activity.code is not None:
        out["code"] = [render_codeable_concept(activity.code)]
    if activity.goal_keys:
        out["goalId"] = list(activity.goal_keys)
    if activity.start_after is not None:
        out["timingDuration"] = activity.start_after.fhir()
    return out
